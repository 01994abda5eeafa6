"""Capture of user idioms and the errors that help (issue: bring your own model).

Each idiom that used to be rejected is captured (and computes what the model computes); each
remaining error names the operation by its qualified name, with its module path and a hint; no
message shows a memory address. The README's supported-ops table equals the op table.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import privquant
from privquant import ops
from privquant.errors import PrivQuantError
from privquant.models.calibration import load_calibration
from privquant.program import Program, run_plain
from privquant.quant.fakequant import QModel
from privquant.quant.graph import capture
from privquant.quant.spec import BitAssignment

pytestmark = pytest.mark.usefixtures("torch_single_thread")
README = Path(__file__).resolve().parents[1] / "README.md"
SHAPE = (1, 28, 28)


def _graph(model: nn.Module, shape=SHAPE):
    return capture(model, type(model).__name__, shape)


def _float_equal(model: nn.Module, shape=SHAPE, post=lambda y: y) -> None:
    g = _graph(model, shape)
    x = torch.rand(3, *shape)
    qm = QModel(g, BitAssignment.uniform("w8a8"))
    qm.mode = "float"
    with torch.no_grad():
        want, got = model.eval()(x), post(qm.eval()(x))
    assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))


def _error(model: nn.Module, shape=SHAPE) -> str:
    with pytest.raises(PrivQuantError) as e:
        _graph(model, shape)
    msg = str(e.value)
    assert "0x" not in msg and "<function" not in msg and "<built-in" not in msg, msg
    assert "boolean_dispatch" not in msg and "\n" not in msg, msg
    return msg


class Wrap(nn.Module):
    """Wraps a forward function around a small conv stem and a linear head."""

    def __init__(self, body, cin: int = 1, c: int = 4, feats: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(cin, c, 3, padding=1)
        self.body = body
        self.fc = nn.LazyLinear(10) if feats is None else nn.Linear(feats, 10)

    def forward(self, x):
        y = self.body(self.conv(x))
        return self.fc(y.flatten(1))


class Fn(nn.Module):
    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.fn(self, x)


# ---------------------------------------------------------------------- the README table
def test_readme_supported_ops_table_is_the_op_table():
    from privquant.quant.graph import supported_ops_markdown

    text = README.read_text()
    m = re.search(r"<!-- supported-ops-begin -->\n(.*?)<!-- supported-ops-end -->", text, re.S)
    assert m, "README has no supported-ops section"
    assert m.group(1) == supported_ops_markdown(), "run scripts/update_supported_ops.py"
    # and it names the input convention next to it
    assert "uint8" in text and "q / 255" in text


def test_every_graph_kind_documents_what_it_captures():
    for kind in ops.GRAPH_KINDS.values():
        assert kind.supported, f"graph kind {kind.name!r} has no README row"


# ---------------------------------------------------------------------- idioms now captured
def test_view_with_size_and_shape():
    for fn in (
        lambda s, x: x.view(x.size(0), -1),
        lambda s, x: x.reshape(x.shape[0], -1),
        lambda s, x: x.view(-1, 4 * 28 * 28),
        lambda s, x: torch.reshape(x, (x.size(0), 4 * 28 * 28)),
        lambda s, x: x.view(x.size(0), 4, 28, 28).flatten(1),
    ):
        m = Wrap(Fn(fn), feats=4 * 28 * 28)
        g = _graph(m)
        kinds = [n.kind for n in g.nodes]
        assert [k for k in kinds if k != "flatten"] == ["input", "conv", "linear", "output"]
        _float_equal(m)


def test_general_reshape_is_local_and_exact():
    m = Wrap(Fn(lambda s, x: F.relu(x).view(x.size(0), 8, 14, 28)), feats=4 * 28 * 28)
    art = privquant.quantize(m, load_calibration(8), "w4a4", progress=False)
    flat = [op for op in art.program.ops if op.kind == "flatten"]
    assert flat[0].attrs["shape"] == [8, 14, 28]
    assert art.program.tensors[flat[0].output].shape == (8, 14, 28)
    _float_equal(m)


@pytest.mark.parametrize(
    "act",
    [nn.GELU(), nn.SiLU(), nn.Sigmoid(), nn.Hardswish(), nn.LeakyReLU(0.2), nn.Tanh(), nn.ELU()],
    ids=lambda m: type(m).__name__,
)
def test_activations_are_lookup_tables(act):
    m = Wrap(act, feats=4 * 28 * 28)
    g = _graph(m)
    assert [n.kind for n in g.nodes][2] == "lut"
    _float_equal(m)


def test_functional_activations():
    m = Wrap(
        Fn(lambda s, x: F.leaky_relu(torch.sigmoid(F.gelu(x, approximate="tanh")), 0.3)),
        feats=4 * 28 * 28,
    )
    g = _graph(m)
    assert [n.attrs.get("fn") for n in g.nodes if n.kind == "lut"] == [
        "gelu_tanh",
        "sigmoid",
        "leaky_relu",
    ]
    _float_equal(m)


def test_classic_lenet_order_is_rewritten():
    m = Wrap(Fn(lambda s, x: F.relu(F.max_pool2d(x, 2))), feats=4 * 14 * 14)
    g = _graph(m)
    conv = g.node("conv")
    assert conv.act == "relu" and any("moved before" in n for n in g.notes)
    assert [n.kind for n in g.nodes] == ["input", "conv", "maxpool", "flatten", "linear", "output"]
    _float_equal(m)


def test_relu_that_cannot_fuse_is_a_lookup_table():
    """A ReLU on a tensor that also feeds a residual add (pre-activation) cannot fuse."""
    m = Wrap(Fn(lambda s, x: F.relu(x) + x), feats=4 * 28 * 28)
    g = _graph(m)
    assert any(n.kind == "lut" and n.attrs["fn"] == "relu" for n in g.nodes)
    _float_equal(m)


def test_final_softmax_dropped_with_a_note():
    for final in (
        nn.Softmax(dim=1),
        nn.LogSoftmax(1),
        Fn(lambda s, x: F.softmax(x, -1)),
        Fn(lambda s, x: x.log_softmax(1)),
    ):
        m = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), final)
        g = _graph(m)
        assert g.nodes[-2].kind == "linear" and "dropped" in g.notes[-1]
    art = privquant.quantize(
        nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Softmax(1)),
        load_calibration(8),
        "w8a8",
        progress=False,
    )
    assert any("softmax" in n for n in art.info["notes"])


def test_softmax_inside_the_network_is_an_error():
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Softmax(1), nn.Linear(10, 10))
    msg = _error(m)
    assert "torch.nn.Softmax" in msg and "module '2'" in msg and "last op" in msg


def test_input_normalization_folds_into_an_unpadded_first_layer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.5]).reshape(1, 1, 1))
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 26 * 26, 10)

        def forward(self, x):
            x = (x - self.mean) / 0.25
            return self.fc(F.relu(self.conv(x)).flatten(1))

    g = _graph(Net())
    assert [n.kind for n in g.nodes] == ["input", "conv", "flatten", "linear", "output"]
    _float_equal(Net())


def test_input_normalization_before_a_padded_conv_is_an_affine_requant():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 10)
            self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).reshape(3, 1, 1))
            self.register_buffer("std", torch.tensor([0.2, 0.3, 0.4]).reshape(1, 3, 1, 1))

        def forward(self, x):
            return self.fc(F.relu(self.conv((x - self.mean) / self.std)).flatten(1))

    net = Net()
    g = _graph(net, (3, 8, 8))
    assert [n.kind for n in g.nodes][:3] == ["input", "affine", "conv"]
    _float_equal(net, (3, 8, 8))
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    art = privquant.quantize(net, x, "w8a8", progress=False)
    rq = art.program.ops[1]
    assert rq.kind == "requant" and rq.inputs == ["input"]
    assert len(set(rq.arrays["offset"].tolist())) == 3  # the per-channel shifts


def test_per_width_constant_is_rejected_clearly():
    net = Wrap(Fn(lambda s, x: x * s.w), feats=4 * 28 * 28)
    net.body.register_buffer("w", torch.linspace(0.5, 1.5, 28))
    with pytest.raises(PrivQuantError, match="not along the channels"):
        privquant.quantize(net, load_calibration(4), "w8a8", progress=False)


def test_batchnorm1d_folds_after_linear_and_stands_alone_elsewhere():
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU())
    m.append(nn.Linear(16, 10))
    with torch.no_grad():
        m[2].running_mean.uniform_(-1, 1)
        m[2].running_var.uniform_(0.5, 2)
    g = _graph(m)
    assert [n.kind for n in g.nodes] == ["input", "flatten", "linear", "linear", "output"]
    _float_equal(m)
    pre = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(784), nn.ReLU(), nn.Linear(784, 10))
    with torch.no_grad():
        pre[1].running_mean.uniform_(-1, 1)
    g = _graph(pre)
    assert [n.kind for n in g.nodes][2] == "affine" and g.nodes[2].act == "relu"
    _float_equal(pre)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_padding_same_for_odd_kernels(k):
    m = Wrap(nn.Conv2d(4, 4, k, padding="same"), feats=4 * 28 * 28)
    g = _graph(m)
    assert g.nodes[2].attrs["padding"] == [k // 2, k // 2]
    _float_equal(m)


def test_padding_same_with_even_kernel_is_named():
    m = Wrap(nn.Conv2d(4, 4, 2, padding="same"), feats=4 * 28 * 28)
    msg = _error(m)
    assert "padding='same'" in msg and "even kernel" in msg
    assert "only zero padding, no dilation" not in msg


def test_global_average_pooling_spellings():
    for fn in (
        lambda s, x: F.adaptive_avg_pool2d(x, 1).flatten(1),
        lambda s, x: F.adaptive_avg_pool2d(x, (1, 1)).view(x.size(0), -1),
        lambda s, x: x.mean((2, 3)),
        lambda s, x: x.mean(dim=[-1, -2], keepdim=True).flatten(1),
        lambda s, x: F.avg_pool2d(x, 28).flatten(1),
        lambda s, x: F.adaptive_avg_pool2d(x, 1).squeeze(-1).squeeze(-1),
        lambda s, x: F.dropout(x.mean((2, 3)).contiguous(), 0.5, False),
    ):
        _float_equal(Wrap(Fn(fn), feats=4))


def test_cat_mul_and_difference():
    def body(s, x):
        a, b = F.relu(x), torch.sigmoid(x)
        return torch.cat([a * b, a - b, x * x], dim=1)

    m = Wrap(Fn(body), feats=12 * 28 * 28)
    g = _graph(m)
    kinds = [n.kind for n in g.nodes]
    assert kinds.count("mul") == 2 and "cat" in kinds and kinds.count("add") == 1
    _float_equal(m)
    art = privquant.quantize(m, load_calibration(8), "w8a8", progress=False)
    sq = [op for op in art.program.ops if op.kind == "mul" and op.inputs[0] == op.inputs[1]]
    assert len(sq) == 1  # x * x: a square (one opening)


# ---------------------------------------------------------------------- errors that help
def test_layernorm_is_named_with_module_path_and_hint():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(16)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.norm(x))

    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), Block())
    msg = _error(m)
    assert "torch.nn.LayerNorm" in msg and "module '2.norm'" in msg and "planned" in msg


def test_functional_layer_norm_is_named():
    m = Wrap(Fn(lambda s, x: F.layer_norm(x, [4, 28, 28])), feats=4 * 28 * 28)
    msg = _error(m)
    assert "torch.nn.functional.layer_norm" in msg


def test_tensor_methods_are_named_as_torch_tensor():
    msg = _error(Wrap(Fn(lambda s, x: x.transpose(2, 3)), feats=4 * 28 * 28))
    assert "torch.Tensor.transpose" in msg and "module 'body (Fn)'" in msg
    msg = _error(Wrap(Fn(lambda s, x: x.view(x.size(0), x.size(1), -1)), feats=4 * 28 * 28))
    assert "x.size(i) for i > 0" in msg


def test_size_outside_a_view_is_explained():
    msg = _error(Wrap(Fn(lambda s, x: x * x.size(1)), feats=4 * 28 * 28))
    assert "operator.mul" in msg or "size" in msg


def test_builtin_functions_are_named_without_addresses():
    msg = _error(Wrap(Fn(lambda s, x: torch.matmul(x, x)), feats=4 * 28 * 28))
    assert "torch.matmul" in msg
    msg = _error(Wrap(Fn(lambda s, x: F.adaptive_avg_pool2d(x, 2)), feats=16))
    assert "AdaptiveAvgPool2d(1)" in msg
    msg = _error(Wrap(Fn(lambda s, x: F.max_pool2d(x, 2, ceil_mode=True)), feats=4 * 14 * 14))
    assert "ceil_mode" in msg
    msg = _error(Wrap(Fn(lambda s, x: torch.cat([x, x], dim=2)), feats=8 * 28 * 28))
    assert "torch.cat" in msg and "dim=1" in msg
    msg = _error(Wrap(Fn(lambda s, x: x / x), feats=4 * 28 * 28))
    assert "operator.truediv" in msg and "divide by constants" in msg


def test_shared_layer_is_refused_and_shared_pool_is_fine():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(49, 10)

        def forward(self, x):
            return self.fc(self.pool(self.pool(self.conv(x))).flatten(1))

    g = _graph(Shared())
    assert [n.name for n in g.nodes if n.kind == "maxpool"] == ["pool", "pool_1"]

    class Twice(Shared):
        def forward(self, x):
            return self.fc(self.pool(self.conv(self.conv(x))).flatten(1)[:, :49])

    msg = _error(Twice())
    assert "called twice" in msg or "operator.getitem" in msg


# ---------------------------------------------------------------------- program validation
def _lut_program(seed: int = 0) -> Program:
    m = Wrap(nn.GELU(), feats=4 * 28 * 28)
    return privquant.quantize(m, load_calibration(8), "w4a4", progress=False).program


@pytest.mark.parametrize(
    "tamper,match",
    [
        (lambda op: op.arrays.update(table=op.arrays["table"][:-1]), "table has shape"),
        (lambda op: op.attrs.update(bits=9), "index bits"),
        (lambda op: op.attrs.update(lo=op.attrs["lo"] + 1), "input range"),
        (lambda op: op.arrays.update(table=op.arrays["table"] + 100), "output bounds"),
    ],
)
def test_lut_op_validation(tamper, match):
    prog = _lut_program()
    Program.from_public_dict(prog.public_dict())  # valid as lowered
    lut = next(op for op in prog.ops if op.kind == "lut")
    tamper(lut)
    with pytest.raises(PrivQuantError, match=match):
        Program.from_public_dict(prog.public_dict())


def test_lut_program_is_exact_on_every_code():
    """The table is evaluated for every input code: run_plain on an input that sweeps them."""
    prog = _lut_program()
    lut = next(op for op in prog.ops if op.kind == "lut")
    x = torch.arange(lut.attrs["lo"], lut.attrs["lo"] + (1 << lut.attrs["bits"]))
    y = ops.get("lut").apply(lut, [x], prog)
    assert torch.equal(y, torch.as_tensor(lut.arrays["table"]))
    assert np.all(np.diff(lut.arrays["table"][(1 << lut.attrs["bits"]) // 2 :]) >= 0)
    out = run_plain(prog, load_calibration(4))
    assert out.shape == (4, 10)


def test_saturating_affine_bias_agrees_with_fake_quant():
    """A public shift far beyond the output range saturates: the requant's offset is clipped
    without changing any output, and the integer program equals fake-quant."""
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU())
    m.append(Fn(lambda s, x: F.relu(x * 2.0 + s.shift)))
    m.append(nn.Linear(8, 10))
    for shift in (5e6, -5e6):
        m[3].shift = shift
        art = privquant.quantize(m, load_calibration(16), "w8a8", progress=False)
        assert [n.kind for n in art.graph.nodes][3] == "affine"
        x = load_calibration(20)[16:]
        rec: dict = {}
        with torch.no_grad():
            art.qmodel("quant")(x.float() / 255, record=rec)
        _, env = run_plain(art.program, x, keep=True)
        name = art.graph.nodes[3].name
        rq = next(op for op in art.program.ops if op.kind == "requant" and op.name == name)
        assert torch.equal(env[rq.output], rec[rq.output])
        assert int(np.abs(rq.arrays["offset"]).max()) < 2**50
