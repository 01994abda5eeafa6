"""Model builders, fx traceability, coding conventions and the shipped reference weights."""

from __future__ import annotations

import operator
import re

import pytest
import torch
import torch.fx
from torch import nn

from privquant.errors import PrivQuantError
from privquant.models import (
    MODEL_NAMES,
    build_model,
    input_shape,
    load_reference,
    num_classes,
    reference_weights_path,
)
from privquant.models.data import load_sample
from privquant.models.train import evaluate_float

SHIPPED = ("lenet5", "resnet8")


def _recorded_accuracy(name: str) -> float:
    """The test top-1 recorded for ``name`` in weights/ACCURACY.md."""
    path = reference_weights_path(name).parent / "ACCURACY.md"
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == name:
            return float(re.sub(r"[^0-9.]", "", cells[2]))
    raise AssertionError(f"{name} missing from {path}")


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model_and_name(request):
    torch.manual_seed(0)
    return build_model(request.param).eval(), request.param


def test_output_shape(model_and_name):
    model, name = model_and_name
    with torch.no_grad():
        out = model(torch.rand(2, *input_shape(name)))
    assert out.shape == (2, num_classes)


def test_fx_trace_matches_eager(model_and_name):
    model, name = model_and_name
    gm = torch.fx.symbolic_trace(model)
    x = torch.rand(2, *input_shape(name))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


def test_conventions(model_and_name):
    """Module activations (never in place), conv+BN or conv+bias, no dropout, no functional relu."""
    model, name = model_and_name
    gm = torch.fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    act = nn.ReLU6 if name == "mobilenetv2-cifar" else nn.ReLU
    n_act = 0
    for node in gm.graph.nodes:
        if node.op == "call_function":
            assert node.target not in (torch.relu, nn.functional.relu, nn.functional.relu6)
        if node.op != "call_module":
            continue
        mod = mods[node.target]
        assert not isinstance(mod, nn.Dropout)
        if isinstance(mod, nn.ReLU | nn.ReLU6):
            assert type(mod) is act and not mod.inplace
            n_act += 1
        if isinstance(mod, nn.Conv2d):
            users = list(node.users)
            followed_by_bn = len(users) == 1 and isinstance(
                mods.get(str(users[0].target)), nn.BatchNorm2d
            )
            if name == "lenet5":
                assert mod.bias is not None and not followed_by_bn
            else:
                assert followed_by_bn and mod.bias is None
    assert n_act > 0


@pytest.mark.parametrize(
    ("name", "n_adds"), [("resnet8", 3), ("resnet18-cifar", 8), ("mobilenetv2-cifar", 10)]
)
def test_residual_adds_are_operator_add(name, n_adds):
    gm = torch.fx.symbolic_trace(build_model(name))
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == n_adds


def test_resnet8_uses_average_pooling_only():
    model = build_model("resnet8")
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert any(isinstance(m, nn.AdaptiveAvgPool2d | nn.AvgPool2d) for m in model.modules())


def test_unknown_model_lists_valid_names():
    with pytest.raises(PrivQuantError, match="resnet8") as exc:
        build_model("vgg16")
    assert "\n" not in str(exc.value)
    with pytest.raises(PrivQuantError):
        input_shape("vgg16")


def test_no_weights_for_cifar_models():
    assert reference_weights_path("resnet18-cifar") is None
    with pytest.raises(PrivQuantError, match="no reference weights"):
        load_reference("mobilenetv2-cifar")


@pytest.mark.parametrize("name", SHIPPED)
def test_reference_weights_load_and_classify_sample(name):
    path = reference_weights_path(name)
    assert path is not None
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    model = load_reference(name)
    assert not model.training
    images, labels = load_sample()
    acc = evaluate_float(model, images, labels)
    recorded = _recorded_accuracy(name)
    assert acc >= 80.0
    assert abs(acc - recorded) <= 5.0, (acc, recorded)


def test_corrupt_reference_weights(tmp_path, monkeypatch):
    import privquant.models as models

    (tmp_path / "lenet5.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(PrivQuantError, match="cannot load reference weights"):
        models.load_reference("lenet5")
