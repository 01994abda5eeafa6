"""CLI for user models: ``--model package.module:ClassOrFactory`` with ``--weights`` (and
``--input-shape``) on quantize, search and bench; every mistake is one clear error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import privquant
from privquant import cli
from privquant.models.calibration import load_calibration
from privquant.program import run_plain

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TESTS = Path(__file__).resolve().parent


def make_norm_net():
    """A factory function (what ``--model zoo_factory:make`` style specs name)."""
    from zoo import NormNet

    return NormNet()


def not_a_model():
    return 3


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A NormNet state_dict with non-trivial BatchNorm statistics."""
    from zoo import build

    net = build("norm", 5)
    path = tmp_path_factory.mktemp("w") / "norm.pt"
    torch.save(net.state_dict(), path)
    return path, net


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_quantize_user_class_with_weights(weights, tmp_path, capsys):
    wpath, net = weights
    out = tmp_path / "norm.pq"
    args = ["quantize", "--model", "zoo:NormNet", "--weights", str(wpath)]
    args += ["--input-shape", "1,28,28", "--bits", "w4a4", "--calib", "32", "--out", str(out)]
    assert cli.main([*args, "--json"]) == 0
    res = _json(capsys)
    assert res["model"] == "zoo:NormNet"
    art = privquant.load(out)
    # exactly what the Python API builds from the same module, weights and calibration images
    ref = privquant.quantize(net, load_calibration(32), "w4a4", name="zoo:NormNet", progress=False)
    assert art.architecture_hash() == ref.architecture_hash() == res["architecture_hash"]
    x = load_calibration(36)[32:]
    assert torch.equal(run_plain(art.program, x), run_plain(ref.program, x))


def test_quantize_factory_and_input_shape_attribute(tmp_path, capsys):
    """A factory function; a class with an ``input_shape`` attribute needs no --input-shape."""
    out = tmp_path / "a.pq"
    args = ["quantize", "--model", "test_cli_user_model:make_norm_net", "--input-shape", "1,28,28"]
    assert cli.main([*args, "--bits", "w8a8", "--calib", "8", "--out", str(out)]) == 0
    assert privquant.load(out).input_shape == (1, 28, 28)
    sys.path.insert(0, str(TESTS.parent / "bench"))
    try:
        out2 = tmp_path / "b.pq"
        args = ["quantize", "--model", "lut_fmnist:SiluNet", "--bits", "w4a4", "--calib", "8"]
        assert cli.main([*args, "--out", str(out2)]) == 0
    finally:
        sys.path.remove(str(TESTS.parent / "bench"))
    kinds = [op.kind for op in privquant.load(out2).program.ops]
    assert kinds.count("lut") == 4
    capsys.readouterr()


@pytest.mark.parametrize(
    "spec,extra,needle",
    [
        ("nosuchmodule_xyz:Net", [], "cannot import 'nosuchmodule_xyz'"),
        ("zoo:NoSuchNet", [], "has no 'NoSuchNet'"),
        ("zoo:ZOO", [], "not a class or factory"),
        ("test_cli_user_model:not_a_model", [], "not an nn.Module"),
        ("zoo:conv_bn", [], "conv_bn() failed"),
        ("zoo:GeluMLP", [], "--input-shape"),
        ("zoo:GeluMLP", ["--input-shape", "1,x,28"], "expected C,H,W"),
        ("zoo:GeluMLP", ["--input-shape", "1,28,28", "--weights", "/nonexistent.pt"], "not found"),
        ("lenet5", ["--input-shape", "1,28,28"], "--input-shape goes with"),
        ("zoo:", [], "package.module:ClassOrFactory"),
    ],
)
def test_user_model_errors_are_one_line(spec, extra, needle, tmp_path, capsys):
    args = ["quantize", "--model", spec, *extra, "--bits", "w4a4", "--calib", "4"]
    assert cli.main([*args, "--out", str(tmp_path / "x.pq")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("privquant: error:") and needle in err[0], err


def test_mismatched_weights_are_one_line(weights, tmp_path, capsys):
    wpath, _ = weights
    args = ["quantize", "--model", "zoo:GeluMLP", "--weights", str(wpath), "--input-shape"]
    args += ["1,28,28", "--bits", "w4a4", "--out", str(tmp_path / "x.pq")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load weights" in err[0]


def test_unsupported_op_through_the_cli_is_one_line(tmp_path, capsys):
    args = ["quantize", "--model", "zoo_unsupported:LayerNormNet", "--input-shape", "1,28,28"]
    (tmp_path / "zoo_unsupported.py").write_text(
        "import torch.nn as nn\n"
        "class LayerNormNet(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(784, 10)\n"
        "        self.norm = nn.LayerNorm(10)\n"
        "    def forward(self, x):\n"
        "        return self.norm(self.fc(x.flatten(1)))\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        assert cli.main([*args, "--bits", "w4a4", "--out", str(tmp_path / "x.pq")]) == 2
    finally:
        sys.path.remove(str(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.nn.LayerNorm" in err[0] and "module 'norm'" in err[0]


def test_search_user_model(weights, tmp_path, capsys):
    wpath, _ = weights
    out = tmp_path / "a.json"
    args = ["search", "--model", "zoo:NormNet", "--weights", str(wpath), "--input-shape"]
    args += ["1,28,28", "--budget-mb", "1", "--wbits", "4,8", "--abits", "4,8"]
    args += ["--eval-limit", "20", "--calib", "32", "--out", str(out), "--json"]
    assert cli.main(args) == 0
    res = _json(capsys)
    assert res["model"] == "zoo:NormNet" and res["predicted_metrics"]["mb"] <= 1
    pq = tmp_path / "a.pq"
    args = ["quantize", "--model", "zoo:NormNet", "--weights", str(wpath), "--input-shape"]
    args += ["1,28,28", "--assignment", str(out), "--calib", "32", "--out", str(pq)]
    assert cli.main(args) == 0
    from privquant.costs import program_cost

    assert program_cost(privquant.load(pq).program)[0].as_dict() == res["predicted"]


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_bench_user_model_real_processes(weights, tmp_path):
    wpath, _ = weights
    cmd = [sys.executable, "-m", "privquant.cli", "bench", "zoo:NormNet", "--weights", str(wpath)]
    cmd += ["--input-shape", "1,28,28", "--bits", "w4a4", "--baselines", "sirnn-style"]
    cmd += ["--network", "none", "--json", "--timeout", "120"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=290, env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads([ln for ln in r.stdout.splitlines() if ln.strip()][-1])
    rows = {row["backend"]: row for row in rep["summary"]}
    assert rows["privquant"]["identical_to_plaintext"] is True
    assert rows["sirnn-style"]["ratio_vs_privquant"] > 1
