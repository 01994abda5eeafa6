"""Whole programs in ``ot`` mode (server and client only): logits bit-identical to the plaintext
integer program, measured bits == declared per layer, and the parties' views: the same message
sizes and statistically indistinguishable bytes for two weight sets (client's view) and two
inputs (server's view), no raw secret on the wire."""

import numpy as np
import pytest
import torch
from runtime_helpers import Recording, shipped, with_other_weights
from scipy import stats

from privquant.program import Program, run_plain
from privquant.protocols.ot.linear import HE_KEYS_SCOPE, he_keys_cost
from privquant.protocols.transport.thread import simulate
from privquant.report import CommReport
from privquant.runtime import run_role


def run_ot(program, x, record=False, timeout=900.0, schedule="auto"):
    pub = Program.from_public_dict(program.public_dict())
    batch = int(x.shape[0])
    recs = {}

    def role(p, prog, **kw):
        if record:
            p.transport = recs[p.rank] = Recording(p.transport)
        return run_role(p, prog, batch=batch, preprocessing="ot", schedule=schedule, **kw)

    res = simulate(lambda p: role(p, program), lambda p: role(p, pub, x=x), timeout=timeout)
    parties = [{"stats": r.stats, "scopes": r.scopes} for r in res.results[:2]]
    report = CommReport.from_stats(program, parties, batch=batch, preprocessing="ot")
    return res.results[1].logits, report, recs, res


def _scope_rounds(program, batch) -> dict[str, int]:
    """Measured rounds per layer scope as the channel computes them: each party's Lamport clock
    summed over the ops entering the scope, then the max over parties (``end_clocks`` of the
    dealer-free protocols; the output opening is one P0 -> P1 message; local ops send nothing)."""
    from privquant import ops
    from privquant.program import ring_bits

    rings = ring_bits(program)
    per: dict[str, list[int]] = {}
    for op in program.ops:
        proto = ops.protocol(op.kind, "privquant", "ot")
        sig = ops.signature(op, program, rings, batch)
        if hasattr(proto, "end_clocks"):
            c = proto.end_clocks(sig)
        elif op.kind == "output":
            c = (0, 1)
        else:
            assert proto.cost(sig, "ot").rounds == 0, op.kind
            c = (0, 0)
        acc = per.setdefault(op.name, [0, 0])
        acc[0] += c[0]
        acc[1] += c[1]
    return {k: max(v) for k, v in per.items()}


def _check_declared(program, report, batch):
    """Bits equal the declared per layer; rounds equal the per-party clock model of the scope
    (at most the declared sum: a requant opening right after the linear layer's message from the
    same party overlaps it)."""
    from privquant import ops
    from privquant.program import ring_bits

    rings = ring_bits(program)
    lin = [
        ops.signature(op, program, rings, 1)
        for op in program.ops
        if op.kind in ("conv2d", "linear")
    ]
    model = _scope_rounds(program, batch)
    for layer in report.layers:
        if layer.name == HE_KEYS_SCOPE:
            assert layer.setup_bits == he_keys_cost(lin).setup_bits
            continue
        d = layer.declared
        assert (layer.online_bits, layer.offline_bits, layer.setup_bits) == (
            d["online_bits"],
            d["offline_bits"],
            d["setup_bits"],
        ), layer.name
        if layer.name in model:
            assert layer.rounds == model[layer.name] <= d["rounds"], layer.name


@pytest.mark.parametrize(
    "name,n,schedule",
    [
        ("lenet5-w8a8.pq", 2, "auto"),
        ("lenet5-w8a8.pq", 1, "interleaved"),
        ("resnet8-w4a4.pq", 1, "auto"),
    ],
)
def test_ot_mode_exact_and_declared(sample, name, n, schedule):
    """Both schedules (``auto`` is offline-first for these sizes): interactive preprocessing
    before the online phase or between its steps, same result, traffic and rounds."""
    art = shipped(name)
    x = sample[0][:n]
    logits, report, _, _ = run_ot(art.program, x, schedule=schedule)
    assert torch.equal(logits, run_plain(art.program, x))
    _check_declared(art.program, report, n)


def _hist(blob: bytes) -> np.ndarray:
    return np.bincount(np.frombuffer(blob, dtype=np.uint8), minlength=256)


def test_ot_mode_views(sample):
    """Client's view under two weight sets, server's view under two inputs: same sizes and
    indistinguishable byte statistics; no raw weights / raw input bytes."""
    art = shipped("lenet5-w8a8.pq")
    x = sample[0][:1]
    runs = []
    for seed in (1, 2):
        prog = with_other_weights(art, seed)
        logits, _, recs, _ = run_ot(prog, x, record=True)
        assert torch.equal(logits, run_plain(prog, x))
        runs.append((prog, recs))
    sizes = [[len(m) for m in recs[1].payloads] for _, recs in runs]
    assert sizes[0] == sizes[1]
    h = [_hist(b"".join(recs[1].payloads)) for _, recs in runs]
    assert stats.chi2_contingency(np.stack(h)).pvalue > 1e-4
    for prog, recs in runs:
        blob = b"".join(recs[1].payloads)
        for op in prog.ops:
            if "weight" in op.arrays:
                raw = op.arrays["weight"].astype(np.int8).tobytes()[:48]
                assert raw not in blob
    # the server's view for two inputs
    x2 = sample[0][1:2]
    _, _, recs2, _ = run_ot(art.program, x2, record=True)
    _, _, recs1, _ = run_ot(art.program, x, record=True)
    assert [len(m) for m in recs1[0].payloads] == [len(m) for m in recs2[0].payloads]
    h = [_hist(b"".join(r[0].payloads)) for r in (recs1, recs2)]
    assert stats.chi2_contingency(np.stack(h)).pvalue > 1e-4
    blob = b"".join(recs1[0].payloads)
    raw_x = x.numpy().tobytes()
    for i in range(0, len(raw_x) - 64, 97):
        if len(set(raw_x[i : i + 64])) > 4:  # skip flat background runs
            assert raw_x[i : i + 64] not in blob


def test_ot_session_many_inferences(sample):
    """One setup (base OTs, weight-bit OTs, HE keys and weight plaintexts), then inferences of
    batch 1 and 2: every one exact; the second inference sends no setup traffic."""
    from privquant.runtime import Session

    art = shipped("lenet5-w8a8.pq")
    pub = Program.from_public_dict(art.program.public_dict())
    xs = [sample[0][:1], sample[0][1:3]]

    def role(p, prog, client):
        s = Session(p, prog, preprocessing="ot")
        s.setup()
        outs, setup_bits = [], []
        for x in xs:
            before = p.stats.bits_sent["setup"]
            r = s.infer(int(x.shape[0]), x if client else None)
            outs.append(r.logits)
            setup_bits.append(p.stats.bits_sent["setup"] - before)
        return outs, setup_bits

    res = simulate(lambda p: role(p, art.program, False), lambda p: role(p, pub, True), timeout=900)
    outs, _ = res.results[1]
    for x, y in zip(xs, outs):
        assert torch.equal(y, run_plain(art.program, x))
    for r in res.results[:2]:
        assert r[1][1] == 0  # nothing of the second inference is setup
