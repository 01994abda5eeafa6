"""Baselines and the benchmark: SiRNN-style cost model vs measured SCI anchors, CrypTen-native as
real processes, the latency estimate, the uniform-bits ablation path and ``privquant bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from privquant.baselines import latency, sci, sirnn
from privquant.errors import PrivQuantError
from privquant.models import WEIGHTS_DIR

LENET = WEIGHTS_DIR / "lenet5-w8a8.pq"


# ------------------------------------------------------------------------------ SiRNN-style
def test_sirnn_model_reproduces_every_sci_anchor_within_10_percent():
    rows = sci.anchor_fit()
    assert len(rows) == 14
    for r in rows:
        assert abs(r["error_pct"]) <= 10.0, r
    # stronger: the formulas follow SCI's code exactly, so every count is reproduced to the byte
    assert all(r["model_bytes"] == r["measured_bytes"] for r in rows)


def test_sirnn_primitives_compose_as_in_sci():
    assert sci.relu(16).bits == sci.msb(16).bits + sci.mux(16).bits
    assert sci.msb(16) == sci.mill(15)
    # extension with a known MSB (after ReLU) skips the millionaire
    assert sci.z_extend(16, 26, msb_known=True).bits < sci.z_extend(16, 26).bits
    assert sci.z_extend(8, 8) == sirnn.ZERO and sci.truncate_and_reduce(16, 0) == sirnn.ZERO
    # EzPC's cross_term_cost helper: d1*d2*(128*m + d3*(m*(l-m) + (m^2+m)/2))
    m, ell, k, n, rows = 16, 42, 576, 64, 1024
    ezpc = k * n * (128 * m + rows * (m * (ell - m) + (m * m + m) / 2))
    ours = k * n * (128 * m + rows * (m * ell - m * (m - 1) // 2))
    assert ezpc == ours


def test_sirnn_program_cost_is_per_layer_and_grows_with_width(lenet5_quantized):
    prog = lenet5_quantized.program
    acts = {n.name: n.act for n in lenet5_quantized.graph.nodes}
    r16 = sirnn.program_cost(prog, config=sci.SirnnConfig(16), acts=acts)
    r8 = sirnn.program_cost(prog, config=sci.SirnnConfig(8), acts=acts)
    assert r16.total["setup_bits"] == sirnn.BASE_OT_SETUP_BYTES * 8
    assert r16.total["offline_bits"] == 0  # SCI runs everything online
    assert r16.total["online_bits"] > r8.total["online_bits"] > 0
    names = [x.name for x in r16.layers]
    assert {"conv1", "conv2", "fc1", "output"} <= set(names)
    assert r16.total["online_bits"] == sum(x.online_bits for x in r16.layers)
    # batch scales every term linearly
    r16b = sirnn.program_cost(prog, batch=3, config=sci.SirnnConfig(16), acts=acts)
    conv = {x.name: x for x in r16.layers}["conv1"].online_bits
    convb = {x.name: x for x in r16b.layers}["conv1"].online_bits
    assert convb > 2 * conv
    # 32/37-bit widths use the uniform-ring form (no extension) and still cost more than 16
    r37 = sirnn.program_cost(prog, config=sci.SirnnConfig(37), acts=acts)
    assert r37.total["online_bits"] > r16.total["online_bits"]
    with pytest.raises(PrivQuantError):
        sci.SirnnConfig(3)


# ------------------------------------------------------------------------------ latency
def test_latency_estimate_formula():
    net = latency.NETWORKS["wan"]
    e = latency.estimate(0.5, 400e6, 10, net)
    assert e["transfer_s"] == pytest.approx(1.0)
    assert e["latency_s"] == pytest.approx(10 * 0.020)
    assert e["seconds"] == pytest.approx(0.5 + 1.0 + 0.2)
    with pytest.raises(PrivQuantError):
        latency.get_network("moon")


def test_emulation_is_skipped_without_root(monkeypatch):
    monkeypatch.setattr(latency.os, "geteuid", lambda: 1000)
    out = latency.measure(LENET, np.zeros((1, 1, 28, 28), np.uint8), [latency.NETWORKS["lan"]])
    assert "root" in out["lan"]["skipped"]


# ------------------------------------------------------------------------------ ablation path
def test_uniform_bits_path_is_internal_only(tmp_path):
    from privquant.quant import spec
    from privquant.quant.spec import BitAssignment, LayerBits, ablation_bits, parse_bits

    for bad in ("w9a1", "w16a16"):
        with pytest.raises(PrivQuantError):
            parse_bits(bad)
    with pytest.raises(PrivQuantError):
        LayerBits(16, 16)
    wide = BitAssignment(default=ablation_bits(16, 16))
    d = wide.to_dict()
    assert d[spec.ABLATION_KEY] is True
    assert BitAssignment.from_dict(d).default == ablation_bits(16, 16)
    assert spec.ABLATION_KEY not in BitAssignment(default=LayerBits(4, 4)).to_dict()
    with pytest.raises(PrivQuantError):
        ablation_bits(17, 16)
    f = tmp_path / "a.json"
    f.write_text(json.dumps(d))
    with pytest.raises(PrivQuantError, match="internal"):
        BitAssignment.load(f)  # user files cannot smuggle wide bits in


def test_lowering_stores_weights_in_smallest_signed_dtype():
    from privquant.quant.lower import smallest_signed

    assert smallest_signed(np.array([-127, 127])).dtype == np.int8
    assert smallest_signed(np.array([-32767, 300])).dtype == np.int16
    assert smallest_signed(np.array([1 << 20])).dtype == np.int32


def test_uniform_16_artifact_lowers_inside_the_ring_limit(lenet5_quantized, tmp_path):
    from privquant.bench import uniform_artifact
    from privquant.program import ring_bits, run_plain
    from privquant.quantized import QuantizedModel

    path = uniform_artifact(lenet5_quantized, 16, tmp_path)
    art = QuantizedModel.load(path)
    assert art.bits.default.w == 16
    w = next(op for op in art.program.ops if op.kind == "conv2d").arrays["weight"]
    assert w.dtype == np.int16 and int(np.abs(w).max()) > 127
    assert max(ring_bits(art.program).values()) <= 62
    x = np.zeros((2, 1, 28, 28), np.uint8)
    assert run_plain(art.program, x).shape == (2, 10)


# ------------------------------------------------------------------------------ real processes
@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_crypten_native_lenet5_two_images_real_processes(sample):
    from privquant.baselines.crypten_native import run_crypten_native

    x, _ = sample
    out = run_crypten_native(LENET, x[:2], timeout=60)
    res = out["result"]
    assert res.extra["argmax_agreement_vs_float"] == 1.0
    assert res.extra["max_abs_logit_error_vs_float"] < 0.05
    assert res.total["online_bits"] > 0 and res.total["offline_bits"] > 0
    assert res.extra["ttp_requests"] > 0
    # counted payload bytes agree with what the two parties wrote to their sockets
    sock = res.extra["socket_write_bytes"]
    counted = res.total["online_bits"] / 8
    written = sock["server_online"] + sock["client_online"]
    assert counted <= written <= 1.05 * counted
    # the ReLU/maxpool layers dominate, as in CrypTen's own counter
    per = {x.name: x.online_bits for x in res.layers}
    assert per["pool1"] > per["conv1"] > 0


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_bench_cli_writes_report_json_md_png(tmp_path):
    out = tmp_path / "rep"
    cmd = [sys.executable, "-m", "privquant.cli", "bench", str(LENET)]
    cmd += ["--baselines", "sirnn-style", "--network", "lan", "--no-emulation"]
    cmd += ["--json", "--out", str(out), "--timeout", "60"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    rep = json.loads(lines[0])
    for f in ("report.json", "report.md", "comm.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    rows = {row["backend"]: row for row in rep["summary"]}
    assert rows["privquant"]["identical_to_plaintext"] is True
    # like with like is labelled: the dealer-mode privquant row is not SCI's trust model
    assert rows["sirnn-style-16"]["ratio_vs_privquant"] > 11
    assert rows["sirnn-style"]["ratio_vs_privquant"] > 1
    assert rows["sirnn-style"]["same_trust_model"] is False
    assert "dealer-free" in rows["sirnn-style"]["compares"]
    assert rows["sirnn-style"]["total_mb"] < rows["sirnn-style-16"]["total_mb"]
    # label-only output (secure argmax) beside the logits: exact, and a few hundred bits more
    label, logits = rows["privquant-label"], rows["privquant"]
    assert label["identical_to_plaintext"] is True
    assert 0 < label["online_mb"] - logits["online_mb"] < 0.005 * logits["online_mb"]
    assert label["rounds"] > logits["rounds"]
    assert "lan" in rep["latency"]["backends"]["privquant"]["estimate"]
    assert (out / "comm.png").read_bytes()[:4] == b"\x89PNG"
    assert "sirnn-style" in (out / "report.md").read_text()


def test_bench_cli_errors_are_one_line(tmp_path):
    cmd = [sys.executable, "-m", "privquant.cli", "bench", str(LENET), "--baselines", "nope"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("privquant: error:") and len(r.stderr.splitlines()) == 1
    r = subprocess.run(
        [sys.executable, "-m", "privquant.cli", "bench", str(tmp_path / "missing.pq")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "not found" in r.stderr


def test_anchor_file_ships_with_the_package():
    assert Path(sirnn.ANCHORS_PATH).is_file()


def test_sirnn_at_the_artifacts_bit_widths():
    """The mixed-width model: the linear layer formula with b_a = b_w = W is the uniform one; a
    4-bit artifact costs far less than at 16-bit fixed point but stays dominated by linear
    layers; widths follow the program (input 8 bits, activations at their quantizer's bits)."""
    import privquant

    cfg16 = sci.SirnnConfig(16)
    for m, k, n_out, n_x in ((64, 27, 16, 3 * 64), (16, 144, 32, 16 * 16)):
        a = sci.linear_layer(m, k, n_out, n_x, cfg16, msb_known=True)
        b = sci.linear_layer(m, k, n_out, n_x, cfg16, msb_known=True, b_a=16, b_w=16)
        assert a == b
    art = privquant.load(str(WEIGHTS_DIR / "resnet8-w4a4.pq"))
    mixed = sci.SirnnConfig(mixed=True)
    r = sirnn.program_cost(art.program, config=mixed)
    u = sirnn.program_cost(art.program, config=cfg16)
    assert 3 * r.total_bits() < u.total_bits()
    assert "artifact" in r.source and r.extra["width"] == "artifact"
    # widths: the first conv reads the 8-bit image, later layers 4-bit activations
    from privquant.baselines.sirnn import SirnnContext
    from privquant.ops import get

    ctx = SirnnContext(art.program, 1, mixed)
    for op in art.program.ops:
        get(op.kind).sirnn(op, ctx)
    first = next(op for op in art.program.ops if op.kind == "conv2d")
    assert ctx.width[first.inputs[0]] == 8
    assert ctx.width[first.output] == 8 + int(first.attrs["w_bits"])
    assert {ctx.width[op.output] for op in art.program.ops if op.kind == "requant"} == {4}
