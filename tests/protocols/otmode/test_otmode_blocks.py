"""Building blocks of the dealer-free protocols: the comparison circuit (chosen-index leaves,
OT triples, shared low block and joins), the COT selection of a polynomial in XOR-shared bits,
the OT lift, the Lamport-depth model; bit-exact, measured == declared per phase."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from otmode_lib import run_pair, run_protocol, share

from privquant.protocols.bitpoly import Poly
from privquant.protocols.lift import LiftSig
from privquant.protocols.ot import circuit, cotprod, select
from privquant.protocols.ot.common import Batch, lamport_depth, session_of
from privquant.protocols.ot.cotprod import CotSpec
from privquant.protocols.ot.lift import OT_LIFT
from privquant.protocols.primitives import ring


@st.composite
def groups(draw):
    low = draw(st.integers(0, 14))
    nj = draw(st.integers(0 if low else 1, 3))
    widths = tuple(draw(st.integers(0 if low else 1, 20)) for _ in range(nj))
    if low == 0 and not widths:
        widths = (1,)
    want_low = low > 0 and draw(st.booleans())
    digit = draw(st.sampled_from([0, 0, 1, 2, 3, 5, 8]))
    return low, widths, want_low, digit


@settings(deadline=None, max_examples=40)
@given(spec=groups(), n=st.integers(1, 40), seed=st.integers(0, 2**31), k=st.sampled_from([4, 8]))
def test_circuit_exact_and_cost(spec, n, seed, k):
    low, widths, want_low, digit = spec
    g = circuit.OtGroup(n, low, widths, want_low, k=k, digit=digit)
    nb = g.nbits
    rng = np.random.default_rng(seed)
    r = rng.integers(0, 1 << nb, n)
    c_low = rng.integers(0, 1 << nb, n)
    c_jobs = [rng.integers(0, 1 << nb, n) for _ in widths]
    # edge values: equal, one above, one below, zero, all ones
    c_low[: min(n, 3)] = r[: min(n, 3)]
    for c in c_jobs:
        c[: min(n, 2)] = (r[: min(n, 2)] + np.array([1, -1][: min(n, 2)])) % (1 << nb)
    if n > 4:
        r[3], r[4] = 0, (1 << nb) - 1

    def body(corr):
        b = Batch()
        b.add(circuit.requests([g], corr.role, [r] if corr.role == 1 else None))
        pres = circuit.build([g], corr.role, b.run(session_of(corr, k), "t"))
        return circuit.online(corr.party, pres, [(c_low, c_jobs)])

    res, cost, _ = run_pair(body, body, k=k)
    lmask = (1 << low) - 1
    expect = []
    for w, c in zip(widths, c_jobs):
        m = (1 << (low + w)) - 1
        C = (c & ~lmask) | (c_low & lmask)
        expect.append(((C & m) < (r & m)).astype(np.uint8))
    if want_low:
        expect.append(((c_low & lmask) < (r & lmask)).astype(np.uint8))
    got = [a ^ b for a, b in zip(res[0][0], res[1][0])]
    assert len(got) == len(expect)
    for x, y in zip(got, expect):
        assert np.array_equal(x, y)
    assert cost == g.cost()


def test_circuit_one_ot_per_digit_serves_every_job():
    """Adding a job to a group costs tables and ANDs, not leaf OTs (P1's digits are shared)."""
    one = circuit.OtGroup(100, 8, (7,), True, digit=4)
    two = circuit.OtGroup(100, 8, (7, 7), True, digit=4)
    assert one.layout.ot_bits == two.layout.ot_bits == 15
    # one more combine triple; the join triple is shared (its width grows)
    assert two.cost().offline_bits - one.cost().offline_bits == 100 * 2 * 31


@st.composite
def polys(draw):
    names = ["a", "b", "h", "x"][: draw(st.integers(1, 4))]
    terms = []
    for _ in range(draw(st.integers(1, 6))):
        bits = tuple(sorted(set(draw(st.lists(st.sampled_from(names), max_size=3)))))
        kind = draw(st.sampled_from(["int", "p0", "R"]))
        coef = draw(st.integers(-(1 << 20), 1 << 20)) << draw(st.integers(0, 6))
        terms.append((bits, kind, coef))
    return names, terms


def _poly(names, terms, n, p0vals):
    q = Poly.const(0)
    for i, (bits, kind, coef) in enumerate(terms):
        t = Poly.const(1)
        for b in bits:
            t = t * Poly.var(b)
        if kind == "int":
            t = t * coef
        elif kind == "p0":
            t = t * Poly.const(p0vals[i])
        else:
            t = t * Poly.arith("R") * coef
        q = q + t
    return q


@settings(deadline=None, max_examples=25)
@given(p=polys(), ell=st.integers(2, 40), seed=st.integers(0, 2**31))
def test_selection_exact_and_cost(p, ell, seed):
    names, terms = p
    n = 50
    rng = np.random.default_rng(seed)
    bits = {v: rng.integers(0, 2, n).astype(np.uint8) for v in names}
    b0 = {v: rng.integers(0, 2, n).astype(np.uint8) for v in names}
    b1 = {v: bits[v] ^ b0[v] for v in names}
    p0vals = [torch.from_numpy(rng.integers(0, 1 << 40, n)) for _ in terms]
    R = rng.integers(0, 1 << 40, n)
    placeholder = [torch.zeros(n, dtype=torch.int64) for _ in terms]
    q_p0 = _poly(names, terms, n, p0vals).reduced(ell)
    q_p1 = _poly(names, terms, n, placeholder).reduced(ell)
    vars_ = q_p0.bit_vars
    spec = select.SelSpec.of(q_p1, ell, n)

    def body(corr):
        b = Batch()
        b.add(cotprod.requests(spec.cots))
        rots = b.run(session_of(corr, 4), "t")
        mine = b0 if corr.role == 0 else b1
        poly = q_p0 if corr.role == 0 else q_p1
        r_val = None if corr.role == 0 else R
        return select.online(corr.party, spec, rots, poly, {v: mine[v] for v in vars_}, r_val)

    res, cost, _ = run_pair(body, body)
    got = (res[0] + res[1]) & ((1 << ell) - 1)
    expect = np.zeros(n, dtype=object)
    for i, (bs, kind, coef) in enumerate(terms):
        v = np.ones(n, dtype=object)
        for b in bs:
            v = v * bits[b].astype(object)
        if kind == "int":
            v = v * coef
        elif kind == "p0":
            v = v * p0vals[i].numpy().astype(object)
        else:
            v = v * R.astype(object) * coef
        expect = expect + v
    expect = np.array([int(e) % (1 << ell) for e in expect], dtype=np.int64)
    assert np.array_equal(got, expect)
    assert cost == spec.cost(4)


def test_selection_drops_products_killed_by_the_ring():
    """A bit weighted by ``2^e`` is a product in ``Z_2^(ell-e)``; at ``e >= ell`` none at all."""
    q = Poly.var("b") * 8 + Poly.var("x") * 1024
    spec = select.SelSpec.of(q.reduced(10), 10, 1)
    assert spec.s1 == ((("b",), 3),) and spec.cots == (CotSpec(1, 1, 7),)


@pytest.mark.parametrize("m,ell", [(2, 3), (5, 20), (9, 62)])
def test_ot_lift(m, ell):
    g = torch.Generator().manual_seed(m)
    n = 300
    q = torch.randint(0, 1 << (m - 1), (n,), generator=g)
    q[:2] = torch.tensor([0, (1 << (m - 1)) - 1])
    q0, q1 = share(q, m, 3)
    sig = LiftSig(n, m, ell)
    out0, out1, cost, _ = run_protocol(OT_LIFT, sig, (q0,), (q1,))
    assert torch.equal(ring.reduce(out0 + out1, ell), q)
    assert cost == OT_LIFT.full_cost(sig)
    assert cost.online_bits == n * (ell - m + 1) and cost.offline_bits == n * 31


def test_lamport_depth_model():
    assert lamport_depth(["10", "01", "x", "x"]) == 4
    assert lamport_depth(["x", "x"]) == 2
    # P1's next one-way message right after a round P0 finished overlaps it
    assert lamport_depth(["10", "01", "x", "10"]) == 3
    assert lamport_depth(["01", "10", "01"]) == 3


@pytest.mark.parametrize("m", [1, 3, 4, 8])
def test_sender_keys_equal_the_ot_layer_definition(m):
    """:func:`nkeys.sender_keys` (half the AES) computes exactly ``NofNSend.keys``; the receiver's
    key is the sender's key at its index."""
    from privquant.protocols.ot.nkeys import sender_keys
    from privquant.protocols.preprocessing.ot import nofn

    def body(corr):
        return nofn.offline(session_of(corr, 4), 0, 3000 if m < 8 else 300, m)

    res, _, _ = run_pair(body, body)
    snd, rcv = res[0], res[1]
    for w in (1, 5, 64):
        fast = sender_keys(snd, w).copy()
        snd._cache.clear()
        assert np.array_equal(fast, snd.keys(w))
        assert np.array_equal(fast[np.arange(len(rcv)), rcv.index], rcv.key(w))
        snd._cache.clear()
