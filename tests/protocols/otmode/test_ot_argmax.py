"""Dealer-free argmax / top-k (``ot`` mode): exact against ``plain_topk`` under hypothesis for
every plan, measured == declared per phase, a whole ``label`` session without a dealer, and the
client's view (its randomness fixed): masked values and the indices only."""

import secrets
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from otmode_lib import MiniOtProvider, run_protocol, share
from runtime_helpers import Recording, argmax_logits, max_z, shipped

from privquant import ops
from privquant.errors import PrivQuantError
from privquant.ops.argmax import ARGMAX_SCOPE, output_program, plain_topk
from privquant.program import Program, ring_bits, run_plain
from privquant.protocols.argmax import ARGMAX, ArgmaxSig
from privquant.protocols.basic import OUTPUT, OpenToSig
from privquant.protocols.ot import circuit, select
from privquant.protocols.ot.argmax import (
    OT_ARGMAX,
    Cmp,
    Eq,
    Sel,
    pair_ring,
    plan_cost,
    plans,
    stages,
)
from privquant.protocols.ot.common import chosen_bits, rot_bits
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.ring import signed_bits
from privquant.protocols.transport.channel import CLIENT
from privquant.protocols.transport.thread import simulate
from privquant.report import CommReport
from privquant.runtime import Session


def _run(sig, x):
    x0, x1 = share(x, sig.ell_in, 5)
    o0, o1, cost, _ = run_protocol(OT_ARGMAX, sig, (x0,), (x1,))
    return ring.reconstruct(o0, o1, sig.ell_out), cost


@st.composite
def cases(draw):
    classes = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 9, 10, 12, 16, 17, 18, 23, 33, 34, 100]))
    k = draw(st.sampled_from([1, 1, 2, min(3, classes), classes])) if classes > 1 else 1
    k = min(k, classes)
    scale = draw(st.sampled_from([1, 1, 1000, 1 << 20, 1 << 40]))
    lo = draw(st.integers(-40, 20)) * scale
    hi = lo + draw(st.integers(0, 60)) * scale + draw(st.integers(0, 3))
    ell_in = min(signed_bits(lo - hi, hi - lo) + draw(st.integers(0, 3)), 62)
    ell_out = signed_bits(0, classes - 1) + draw(st.sampled_from([0, 0, 1, 4]))
    n = draw(st.integers(1, 3))
    ties = draw(st.booleans())
    sig = ArgmaxSig(n, classes, k, lo, hi, ell_in, ell_out)
    if sig.ell_diff + ell_out > 62:
        return sig, None
    force = draw(st.sampled_from([None, *plans(sig)]))
    return ArgmaxSig(n, classes, k, lo, hi, ell_in, ell_out, force), ties


@settings(deadline=None, max_examples=30)
@given(case=cases(), seed=st.integers(0, 2**31))
def test_topk_exact_and_cost(case, seed):
    sig, ties = case
    if ties is None:
        with pytest.raises(PrivQuantError):
            OT_ARGMAX.full_cost(sig)
        return
    lo, hi, n, classes = sig.lo, sig.hi, sig.n, sig.classes
    x = argmax_logits(lo, hi, n, classes, ties, seed)
    y, cost = _run(sig, x)
    assert torch.equal(y, plain_topk(x, sig.k))
    assert cost == OT_ARGMAX.full_cost(sig)
    assert OT_ARGMAX.cost(sig, "ot").online_bits == cost.online_bits


@pytest.mark.parametrize("plan,k", [("network", 4), ("flat", 1), ("rank", 4), ("rank", 1)])
def test_ring_edges_and_all_equal(plan, k):
    """Logits at the ends of the widest ring the packing allows; every logit equal."""
    lo, hi = -(1 << 55), (1 << 55) - 1
    sig = ArgmaxSig(3, 10, k, lo, hi, 62, 5, plan)
    assert sig.ell == 62
    rows = [
        torch.full((3, 10), hi),
        torch.full((3, 10), lo),
        torch.tensor([[lo, hi] * 5, [hi, lo] * 5, [lo + 1, hi - 1] * 5]),
    ]
    for x in rows:
        y, cost = _run(sig, x)
        assert torch.equal(y, plain_topk(x, k))
        assert cost == OT_ARGMAX.full_cost(sig)


@pytest.mark.parametrize("plan", ["network", "flat", "rank"])
def test_constant_logits(plan):
    """``lo = hi``: every logit equal, the narrowest rings (``Ld = 2``, ``Lo = 4``)."""
    sig = ArgmaxSig(2, 6, 1, 3, 3, 2, 4, plan)
    assert pair_ring(sig) == sig.ell_diff == 2
    x = torch.full((2, 6), 3)
    y, cost = _run(sig, x)
    assert torch.equal(y, plain_topk(x, 1)) and cost == OT_ARGMAX.full_cost(sig)


def test_cost_formulas_and_plan_choice():
    """The closed forms of the module docstring, by hand, for 10 classes (n = 2, L = 21)."""
    kk, n, C, lo, hi = 4, 2, 10, -(1 << 14), (1 << 14) - 1
    sig = ArgmaxSig(n, C, 1, lo, hi, 16, 5)
    L = sig.ell
    assert L == 21

    def cmp(m, ell=L):
        g = circuit.OtGroup(m, 0, (ell - 1,), k=kk).cost()
        return m * ell + g.online_bits, g.offline_bits

    def cots(m, widths):  # COT products: online m*(w+1), offline m*(128/k - 1) each
        return m * sum(w + 1 for w in widths), m * len(widths) * rot_bits(kk)

    # network: 9 comparators in 4 layers; two COT products per comparator (Z_2^L / Z_2^Lo)
    on = off = 0
    for m, ls in ((5, L), (2, L), (1, L), (1, 5)):
        a, b = cmp(n * m)
        c, d = cots(n * m, (ls, ls))
        on, off = on + a + c, off + b + d
    net = plan_cost(kk, sig, "network")
    assert (net.online_bits, net.offline_bits) == (on, off)
    # flat: 45 pairs at once (unpacked, Ld = 16 bits); 27 three-bit ANDs in Z_2 (7 products
    # each); 9*7 index products
    assert pair_ring(sig) == sig.ell_diff == 16
    a, b = cmp(n * 45, 16)
    c, d = cots(n * 9 * 3, (1,) * 7)
    widths = [5 - (i & -i).bit_length() + 1 for i in range(1, C)]  # Lo - v2(i)
    e, f = cots(n, [w for w in widths for _ in range(7)])
    flat = plan_cost(kk, sig, "flat")
    assert (flat.online_bits, flat.offline_bits) == (a + c + e, b + d + f)
    assert OT_ARGMAX.plan(sig) == "flat" and flat.online_rounds < net.online_rounds
    # rank (top-3): 45 pairs, B2A to Z_16, 10 masked ranks + 1-of-16 lookups of 3 bits
    sig3 = ArgmaxSig(n, C, 3, lo, hi, 16, 5)
    a, b = cmp(n * 45, 16)
    c, d = cots(n * 45, (4,))
    e = n * 10 * (4 + 16 * 3)
    f = n * 10 * 4 * chosen_bits(kk)
    g_, h = cots(n * 3, widths)
    rank = plan_cost(kk, sig3, "rank")
    assert (rank.online_bits, rank.offline_bits) == (a + c + e + g_, b + d + f + h)
    assert OT_ARGMAX.plan(sig3) == "rank"
    assert OT_ARGMAX.plan(ArgmaxSig(n, 34, 2, lo, hi, 16, 7)) == "network"
    assert [type(s) for s in stages(sig3, "rank")] == [Cmp, Sel, Eq, Sel]
    assert isinstance(stages(sig, "flat")[1].spec, select.SelSpec)


def test_hostile_inputs_rejected():
    sig = ArgmaxSig(2, 10, 1, -8, 7, 5, 5)
    with pytest.raises(PrivQuantError, match="plan 'flat'"):
        OT_ARGMAX.full_cost(ArgmaxSig(2, 10, 2, -8, 7, 5, 5, "flat"))
    with pytest.raises(PrivQuantError, match="differences"):
        OT_ARGMAX.full_cost(ArgmaxSig(2, 10, 1, 0, 15, 4, 5))
    with pytest.raises(PrivQuantError, match="shape"):
        OT_ARGMAX.online(None, sig, [], torch.zeros((3, 10), dtype=torch.int64))
    with pytest.raises(PrivQuantError, match="preprocessing"):
        OT_ARGMAX.online(None, sig, [], torch.zeros((2, 10), dtype=torch.int64))
    with pytest.raises(PrivQuantError, match="dealer-free"):
        OT_ARGMAX.cost(sig, "dealer")


def test_registered_for_ot_mode():
    proto = ops.protocol("argmax", "privquant", "ot")
    assert proto is OT_ARGMAX
    assert ops.protocol("argmax", "privquant", "dealer") is ARGMAX


# ------------------------------------------------------------------------------ whole session
def test_ot_session_label_exact_and_declared(sample):
    """A whole lenet5 inference in ot mode under the ``label`` and ``topk:3`` policies: the
    client gets exactly the plaintext program's top-k; every layer's bits == declared."""
    art = shipped("lenet5-w8a8.pq")
    pub = Program.from_public_dict(art.program.public_dict())
    x = sample[0][:2]
    ref = run_plain(art.program, x)
    for output, k in (("label", 1), ("topk:3", 3)):

        def role(p, prog, xx=None, output=output):
            s = Session(p, prog, preprocessing="ot", output=output)
            s.setup()
            return s.infer(2, xx).logits, s.result()

        res = simulate(lambda p: role(p, art.program), lambda p: role(p, pub, x), timeout=600)
        assert torch.equal(res.results[1][0], plain_topk(ref, k))
        assert res.results[0][0] is None
        parties = [{"stats": r[1].stats, "scopes": r[1].scopes} for r in res.results[:2]]
        rep = CommReport.from_stats(
            output_program(art.program, output), parties, batch=2, preprocessing="ot"
        )
        layer = next(la for la in rep.layers if la.name == ARGMAX_SCOPE)
        d = layer.declared
        assert (layer.online_bits, layer.offline_bits) == (d["online_bits"], d["offline_bits"])
        prog = output_program(art.program, output)
        op = next(o for o in prog.ops if o.kind == "argmax")
        sig = ops.signature(op, prog, ring_bits(prog), 2)
        assert sig.k == k and d["rounds"] == OT_ARGMAX.full_cost(sig).online_rounds
        assert layer.rounds == max(OT_ARGMAX.end_clocks(sig)) <= d["rounds"]
        outl = next(la for la in rep.layers if la.name == "output")
        assert outl.online_bits == 2 * k * 5  # only k indices of Lo = 5 bits per sample
        assert rep.all_match, [la.name for la in rep.layers if not la.matches]


# ------------------------------------------------------------------------------ client's view
_fixed = threading.local()


@pytest.fixture
def fixed_client_randomness(monkeypatch):
    """``secrets.token_bytes`` returns a fixed stream in threads that ask for it (the client),
    the OS CSPRNG elsewhere (the server)."""
    real = secrets.token_bytes

    def token_bytes(n=None):
        g = getattr(_fixed, "gen", None)
        if g is None:
            return real(n)
        return bytes(g.integers(0, 256, 32 if n is None else n, dtype=np.uint8))

    monkeypatch.setattr(secrets, "token_bytes", token_bytes)


def _client_view(sig, logits, x1, k: int | None):
    """The bits the client receives (setup, offline, online, the opening) when the server holds
    ``logits - x1``; the client's share and all its randomness are fixed, the server's fresh.
    ``k=None`` opens the logits instead (the control)."""
    x0 = ring.reduce(logits - x1, sig.ell_in)
    rec = {}

    def body(party, share_):
        if party.rank == CLIENT:
            _fixed.gen = np.random.default_rng(2024)
            party.transport = rec["t"] = Recording(party.transport)
        try:
            if k is None:
                return OUTPUT.online(party, OpenToSig(tuple(logits.shape), sig.ell_in), None,
                                     share_)  # fmt: skip
            corr = MiniOtProvider(party, OT_ARGMAX.k)
            pre = OT_ARGMAX.offline(corr, sig)
            idx = OT_ARGMAX.online(party, sig, pre, share_)
            return OUTPUT.online(party, OpenToSig((sig.n, sig.k), sig.ell_out), None, idx)
        finally:
            _fixed.gen = None

    res = simulate(lambda p: body(p, x0), lambda p: body(p, x1), timeout=120)
    bits = np.unpackbits(np.frombuffer(b"".join(rec["t"].payloads), dtype=np.uint8))
    return bits, res.results[CLIENT]


@pytest.mark.parametrize(
    "k,force,runs",
    [
        (1, None, 30),
        pytest.param(2, None, 60, marks=pytest.mark.slow),
        pytest.param(2, "network", 60, marks=pytest.mark.slow),
        pytest.param(1, "rank", 60, marks=pytest.mark.slow),
    ],
    ids=["label-flat", "top2-rank", "top2-network", "label-rank"],
)
def test_client_view_holds_only_masked_values_and_the_indices(fixed_client_randomness, k, force,
                                                              runs):  # fmt: skip
    """Two server logit vectors with the same top-k, the client's share and randomness fixed:
    the same distribution of every received bit and exactly the top-k decoded; opening the
    logits (the control) is told apart at once by the same statistic."""
    lo, hi = -8, 7
    sig = ArgmaxSig(1, 10, k, lo, hi, 5, 5, force)
    xa = torch.tensor([[5, -8, 7, 1, -3, 0, 2, 6, -1, 4]])  # top-2: 2, 7
    xb = torch.tensor([[-8, -8, 7, -8, 3, -8, 5, 6, 5, -8]])  # top-2: 2, 7 as well
    assert torch.equal(plain_topk(xa, 2), plain_topk(xb, 2))
    x1 = ring.reduce(torch.tensor([[3, 900, 17, 5, 63, 1000, 2, 77, 1023, 64]]), 5)
    limit = 6.5  # |z| of equal marginals over ~10^5 bit positions stays far below it
    for policy_k in (k, None):
        va, vb = [], []
        for _ in range(runs):
            bits_a, out_a = _client_view(sig, xa, x1, policy_k)
            bits_b, out_b = _client_view(sig, xb, x1, policy_k)
            va.append(bits_a)
            vb.append(bits_b)
            if policy_k is not None:
                assert torch.equal(out_a, plain_topk(xa, k)) and torch.equal(out_b, out_a)
        assert len(va[0]) == len(vb[0])
        z = max_z(np.stack(va), np.stack(vb))
        if policy_k is None:
            assert z > limit, z  # the logits control: the same statistic sees the difference
        else:
            assert z < limit, z
