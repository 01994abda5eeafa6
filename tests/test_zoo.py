"""Bring your own model: the test zoo (tests/zoo.py) at w8a8 and w4a4, random weights with random
BatchNorm statistics.

For each model and bit width:
* the captured float graph computes what the model computes (up to a dropped final softmax);
* fake-quant == integer program, teacher-forced op by op: every requantization within 1 LSB
  (>= 99% exact), every lookup activation, reshape, max pool and concatenation *exactly* on the
  recorded inputs, the logits equal to the fake-quant logits; free-running predictions agree;
* private inference (server, client and dealer as threads, the real dealer role) is bit-exact to
  the integer program and every layer's measured bits and rounds equal its declared ``cost()``.
One model also runs as three real OS processes (``privquant.infer``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from runtime_helpers import run_threads
from zoo import ZOO, build

import privquant
from privquant.models.calibration import load_calibration
from privquant.program import apply_op, output_logits, run_plain
from privquant.quantized import QuantizedModel

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BITS = ("w8a8", "w4a4")
CASES = [(m, b) for m in ZOO for b in BITS]
# the op a model's final output went through (dropped at capture, noted)
FINAL = {"lenet-classic": lambda y: F.log_softmax(y, 1), "norm-fold": lambda y: F.softmax(y, -1)}
EXACT_KINDS = ("lut", "flatten", "maxpool", "sumpool", "neg")


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    return build(name, seed)


@pytest.fixture(scope="module")
def quantized():
    cache: dict = {}

    def get(name: str, bits: str) -> tuple[torch.nn.Module, QuantizedModel]:
        if (name, bits) not in cache:
            model = _model(name)
            q = privquant.quantize(model, load_calibration(32), bits, name=name, progress=False)
            cache[(name, bits)] = (model, q)
        return cache[(name, bits)]

    return get


def _inputs() -> torch.Tensor:
    x = load_calibration(40)[32:]
    return torch.cat([x, torch.zeros_like(x[:1]), torch.full_like(x[:1], 255)])


@pytest.mark.parametrize("name", list(ZOO))
def test_float_graph_equals_model(quantized, name):
    model, q = quantized(name, "w8a8")
    x = _inputs().float() / 255.0
    with torch.no_grad():
        want = model.eval()(x)
        got = FINAL.get(name, lambda y: y)(q.qmodel("float")(x))
    assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))


def _teacher_forced(q: QuantizedModel, x: torch.Tensor):
    rec: dict[str, torch.Tensor] = {}
    qm = q.qmodel("quant")
    with torch.no_grad():
        fq = qm(x.float() / 255.0, record=rec)
    env: dict[str, torch.Tensor] = {}
    worst: dict[str, tuple[int, float]] = {}
    requantized = {}  # tensor -> does it rescale already quantized integers only?
    for op in q.program.ops:
        ins = [env[i] for i in op.inputs] if op.inputs else [x]
        y = apply_op(op, ins, q.program)
        quantized_in = all(
            q.program.tensors[i].scale is not None or requantized.get(i, False) for i in op.inputs
        )
        requantized[op.output] = op.kind == "requant" and quantized_in
        if op.output in rec:
            d = (y - rec[op.output]).abs()
            frac = float((d == 0).double().mean())
            worst[op.output] = (op.kind, int(d.max()), frac, quantized_in)
            y = rec[op.output]
        env[op.output] = y
    return worst, env[q.program.output_op.output], fq


@pytest.mark.parametrize("case", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_fakequant_equals_integer_program(quantized, case):
    name, bits = case
    _, q = quantized(name, bits)
    x = _inputs()
    worst, logits, fq = _teacher_forced(q, x)
    kinds = {w[0] for w in worst.values()}
    assert "requant" in kinds or "concat" in kinds
    for t, (kind, diff, exact, _rescale) in worst.items():
        if kind in EXACT_KINDS:
            assert diff == 0, f"{t} ({kind}) differs by {diff}"
        else:
            # a rescale of already quantized integers has only 2^b distinct inputs: one of them
            # near a rounding tie moves a whole fraction of the elements (still within 1 LSB);
            # elsewhere the multipliers' error budget (1/4 LSB) flips only near-ties (a few
            # percent; up to 7% on the squeeze-excitation pools' 160 values)
            assert diff <= 1 and exact >= 0.9, (t, kind, diff, exact)
    real = output_logits(q.program, logits)
    assert float((real - fq.double()).abs().max()) <= 1e-4 * max(1.0, float(fq.abs().max()))
    # free running: the predictions agree
    with torch.no_grad():
        fq_free = q.qmodel("quant")(x.float() / 255.0).argmax(1)
    agree = float((run_plain(q.program, x).argmax(1) == fq_free).double().mean())
    assert agree >= 0.8, agree


@pytest.mark.parametrize("case", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_private_inference_exact_and_counted(quantized, case):
    name, bits = case
    _, q = quantized(name, bits)
    x = _inputs()[:2]
    logits, report, _ = run_threads(q.program, x)
    assert torch.equal(logits, run_plain(q.program, x))
    assert report.all_match, [(r.name, r.declared) for r in report.layers if not r.matches]


def test_lut_models_use_lookup_and_fusion(quantized):
    """The activations are table lookups whose input requant emits into its small ring (no lift
    of its own), and the artifact round-trips without the model's class."""
    from privquant.program import ring_bits

    _, q = quantized("gelu-mlp", "w4a4")
    prog = q.program
    rings = ring_bits(prog)
    luts = [op for op in prog.ops if op.kind == "lut"]
    assert len(luts) == 4
    for op in luts:
        x = prog.tensors[op.inputs[0]]
        # w4a4: 6-bit tables (LUT_INPUT_EXTRA_BITS), read in the requant's small ring
        assert op.attrs["bits"] == 6 and rings[op.inputs[0]] == x.bits
        producer = prog.producer(op.inputs[0])
        assert producer.kind == "requant"


def test_artifact_round_trip_without_class(quantized, tmp_path):
    _, q = quantized("cat-mul", "w4a4")
    path = tmp_path / "catmul.pq"
    q.save(path)
    back = privquant.load(path)
    x = _inputs()[:3]
    assert torch.equal(run_plain(back.program, x), run_plain(q.program, x))
    assert back.architecture_hash() == q.architecture_hash()
    with torch.no_grad():
        a = back.qmodel("quant")(x.float() / 255)
        b = q.qmodel("quant")(x.float() / 255)
    assert torch.equal(a, b)


@pytest.mark.multiprocess
def test_real_processes_mobile_silu(quantized):
    _, q = quantized("mobile-silu", "w4a4")
    x = _inputs()[:2]
    res = privquant.infer(q, x, timeout=120)
    assert res["identical"]
    assert res["report"].all_match


@pytest.mark.parametrize("name", ["gelu-mlp", "cat-mul", "norm"])
def test_search_cost_table_is_exact(name):
    """The search's cost table (the same lowering, symbolic) equals the lowered program's cost,
    per scope, for random mixed assignments: lookup tables, products and concatenations
    included."""
    import random

    from privquant.quant.costtable import (
        build_cost_table,
        frozen_qmodel,
        frozen_scales,
        program_cost,
    )
    from privquant.quant.graph import capture
    from privquant.quant.lower import lower

    g = capture(_model(name), name, (1, 28, 28))
    scales = frozen_scales(g, load_calibration(32), (2, 4, 8))
    table = build_cost_table(g, wbits=(2, 4, 8), abits=(2, 4, 8), scales=scales)
    rng = random.Random(3)
    for _ in range(3):
        values = {v: rng.choice(d) for v, d in table.domains.items()}
        prog = lower(frozen_qmodel(g, table.bitvars.assignment(values), scales))
        total, scopes = program_cost(prog)
        assert table.evaluate(values) == (total, scopes)


@pytest.mark.parametrize("name", list(ZOO))
def test_sirnn_style_baseline_costs_every_zoo_op(quantized, name):
    from privquant.baselines.sirnn import program_cost

    _, q = quantized(name, "w4a4")
    res = program_cost(q.program, acts={n.name: n.act for n in q.graph.nodes})
    assert res.total["online_bits"] > 0
    names = {op.name for op in q.program.ops}
    assert names <= {layer.name for layer in res.layers}


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_crypten_native_baseline_runs_lut_mul_cat(quantized, tmp_path):
    """The CrypTen-native baseline evaluates the float graph (sigmoid, LeakyReLU, products,
    concatenation) on MPCTensors, three processes: its argmax equals the float model's."""
    from privquant.baselines.crypten_native import run_crypten_native

    _, q = quantized("cat-mul", "w4a4")
    path = tmp_path / "catmul.pq"
    q.save(path)
    res = run_crypten_native(path, _inputs()[:2], timeout=120)
    assert res["result"].extra["argmax_agreement_vs_float"] == 1.0
    assert res["result"].extra["max_abs_logit_error_vs_float"] < 0.05
