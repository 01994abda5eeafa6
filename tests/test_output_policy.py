"""Output policies (label, topk:K, logits): exact sessions, exact cost, and the client's view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from runtime_helpers import Recording, max_z, shipped

from privquant import ops
from privquant.errors import PrivQuantError
from privquant.ops.argmax import ARGMAX_SCOPE, output_program, plain_topk, policy_k
from privquant.program import Program, ring_bits, run_plain
from privquant.protocols import compare
from privquant.protocols.argmax import ARGMAX, ArgmaxSig
from privquant.protocols.basic import OUTPUT, OpenToSig
from privquant.protocols.preprocessing.dealer import Seeds, make_provider
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, DEALER, SERVER
from privquant.protocols.transport.thread import simulate
from privquant.report import CommReport
from privquant.runtime import Session
from privquant.serving import Policy, prediction_result


def run_session(program: Program, x: torch.Tensor, output: str, batches: list[int]):
    """Server, client and dealer Sessions as threads: setup once, one inference per chunk."""
    pub = Program.from_public_dict(program.public_dict())

    def role(p, prog, xx=None):
        s = Session(p, prog, output=output)
        s.setup()
        outs, i = [], 0
        for b in batches:
            outs.append(s.infer(b, None if xx is None else xx[i : i + b]).logits)
            i += b
        return (torch.cat(outs) if outs[0] is not None else None), s.result()

    res = simulate(
        lambda p: role(p, program),
        lambda p: role(p, pub, x),
        lambda p: role(p, pub),
        timeout=300,
    )
    parties = [{"stats": r[1].stats, "scopes": r[1].scopes} for r in res.results]
    rep = CommReport.from_stats(
        output_program(program, output), parties, batch=sum(batches), batches=batches
    )
    return res.results[1][0], rep


@pytest.fixture(scope="module")
def lenet():
    return shipped("lenet5-w8a8.pq")


@pytest.mark.parametrize("output", ["label", "topk:3", "topk:10", "logits"])
def test_session_exact_and_counted(lenet, sample, output):
    x = sample[0][:5]
    out, rep = run_session(lenet.program, x, output, [3, 2])
    ref = run_plain(lenet.program, x)
    k = policy_k(output)
    assert torch.equal(out, ref if k is None else plain_topk(ref, k))
    assert rep.all_match, [layer.name for layer in rep.layers if not layer.matches]
    names = {layer.name for layer in rep.layers}
    assert (ARGMAX_SCOPE in names) == (k is not None)
    outl = next(layer for layer in rep.layers if layer.name == "output")
    if k is not None:  # the client receives k indices of Lo bits per sample, nothing else
        assert outl.online_bits == 5 * k * 5


def test_label_costs_little_beside_logits(lenet, sample):
    x = sample[0][:2]
    _, logits = run_session(lenet.program, x, "logits", [2])
    _, label = run_session(lenet.program, x, "label", [2])
    extra = label.total["online_bits"] - logits.total["online_bits"]
    assert 0 < extra < 0.005 * logits.total["online_bits"]  # lenet5: a small network
    am = next(layer for layer in label.layers if layer.name == ARGMAX_SCOPE)
    prog = output_program(lenet.program, "label")
    sig = ops.signature(prog.ops[-2], prog, ring_bits(prog), 2)
    depth = compare.Group(1, 0, (sig.ell - 1,)).depth
    # constant rounds: open, the comparison's tree, the ANDs of the wins, the index polynomial
    assert sig.plan == "flat" and am.rounds == 3 + depth


def test_policy_parsing_and_checks(lenet):
    assert [policy_k(p) for p in ("label", "topk:1", "topk:7", "logits")] == [1, 1, 7, None]
    for bad in (
        "topk:0",
        "topk:",
        "topk:-1",
        "topk:1.5",
        "argmax",
        "",
        "topk:999999",
        "topk:\u0663",
    ):
        with pytest.raises(PrivQuantError, match="output policy"):
            policy_k(bad)
        with pytest.raises(PrivQuantError):
            Policy(output=bad)
    with pytest.raises(PrivQuantError, match="10 classes"):
        output_program(lenet.program, "topk:11")
    prog = output_program(lenet.program, "topk:4")
    assert [op.kind for op in prog.ops[-2:]] == ["argmax", "output"]
    assert prog.tensors[prog.output_op.output].shape == (4,)
    assert lenet.program.ops[-1].inputs != prog.ops[-1].inputs  # the artifact's is untouched
    assert output_program(lenet.program, "logits") is lenet.program
    with pytest.raises(PrivQuantError, match="already"):
        output_program(prog, "label")
    # the policy changes no public hash: it travels in the offer next to the program
    assert prog.architecture_hash() != lenet.program.architecture_hash()
    assert Policy().output == "label"


def test_prediction_result_shapes(lenet, sample):
    ref = run_plain(lenet.program, sample[0][:3])
    assert set(prediction_result(lenet.program, "label", plain_topk(ref, 1))) == {
        "output",
        "labels",
    }
    top = prediction_result(lenet.program, "topk:2", plain_topk(ref, 2))
    assert top["topk"] == plain_topk(ref, 2).tolist() and top["labels"] == ref.argmax(1).tolist()
    full = prediction_result(lenet.program, "logits", ref)
    assert full["logits_int"] == ref.tolist() and full["labels"] == ref.argmax(1).tolist()


# ------------------------------------------------------------------------------ transcripts
def _client_view(logits, x1, d0: bytes, k: int | None, lo, hi, force: str | None = None):
    """What the client receives (payload bits, in order) when the server holds the logits share
    ``logits - x1`` and the client ``x1``; every seed the client holds is fixed, only the
    server-dealer seed ``d0`` varies. ``k=None``: the logits are opened (the control)."""
    n, classes = logits.shape
    L_in = ring.signed_bits(lo - hi, hi - lo)
    Lo = ring.signed_bits(0, classes - 1)
    sig = ArgmaxSig(n, classes, k or 1, lo, hi, L_in, Lo, force)
    x0 = ring.reduce(logits - x1, L_in)
    fixed = Seeds.derived(12345)
    seeds = {
        SERVER: Seeds({"d0": d0, "01": fixed.seeds["01"]}),
        CLIENT: Seeds({"d1": fixed.seeds["d1"], "01": fixed.seeds["01"]}),
        DEALER: Seeds({"d0": d0, "d1": fixed.seeds["d1"]}),
    }
    rec = {}

    def body(party, share):
        if party.rank == CLIENT:
            party.transport = rec["t"] = Recording(party.transport)
        corr = make_provider(party, seeds[party.rank])
        if k is None:
            return None if share is None else OUTPUT.online(party, OpenToSig((n, classes), L_in),
                                                            None, share)  # fmt: skip
        pre = ARGMAX.offline(corr, sig)
        if share is None:
            return None
        idx = ARGMAX.online(party, sig, pre, share)
        return OUTPUT.online(party, OpenToSig((n, k), Lo), None, idx)

    res = simulate(lambda p: body(p, x0), lambda p: body(p, x1), lambda p: body(p, None))
    bits = np.unpackbits(np.frombuffer(b"".join(rec["t"].payloads), dtype=np.uint8))
    return bits, res.results[CLIENT]


@pytest.mark.parametrize(
    "k,force",
    [(1, None), (2, None), pytest.param(2, "network", marks=pytest.mark.slow)],
    ids=["label-flat", "top2-rank", "top2-network"],
)
def test_client_view_holds_only_masked_values_and_the_label(k, force):
    """Two server logit vectors with the same top-k: the client (its share and seeds fixed) sees
    the same distribution of every received bit, and decodes exactly the top-k; opening the
    logits instead (the control) is told apart at once by the same statistic."""
    lo, hi = -8, 7
    xa = torch.tensor([[5, -8, 7, 1, -3, 0, 2, 6, -1, 4]])  # top-2: 2, 7
    xb = torch.tensor([[-8, -8, 7, -8, 3, -8, 5, 6, 5, -8]])  # top-2: 2, 7 as well
    assert torch.equal(plain_topk(xa, 2), plain_topk(xb, 2))
    x1 = ring.reduce(torch.tensor([[3, 900, 17, 5, 63, 1000, 2, 77, 1023, 64]]), 5)
    g = np.random.default_rng(0)
    runs = 120
    seeds = [bytes(g.integers(0, 256, 16, dtype=np.uint8)) for _ in range(runs)]
    for policy_k_, expect_leak in ((k, False), (None, True)):
        va, vb = [], []
        for d0 in seeds:
            bits_a, out_a = _client_view(xa, x1, d0, policy_k_, lo, hi, force)
            bits_b, out_b = _client_view(xb, x1, d0[::-1], policy_k_, lo, hi, force)
            va.append(bits_a)
            vb.append(bits_b)
            if policy_k_ is not None:
                assert torch.equal(out_a, plain_topk(xa, k)) and torch.equal(out_b, out_a)
        z = max_z(np.stack(va), np.stack(vb))
        if expect_leak:
            assert z > 12.0, z  # the logits control: the same statistic sees the difference
        else:
            assert len(va[0]) == len(vb[0]) and z < 6.0, z
