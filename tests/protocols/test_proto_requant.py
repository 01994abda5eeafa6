"""Fused requantization: the algebra (brute force), exactness against the plaintext program,
measured == declared cost, every mode/form, the unfused ablation and the op-level wrapper."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_testlib import assert_cost, requant_op, share

from privquant.ops import signature
from privquant.program import Op, Program, TensorInfo, apply_op, ring_bits
from privquant.protocols import requant as rq
from privquant.protocols.harness import run_protocol
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.ring import signed_bits
from privquant.protocols.requant import REQUANT, REQUANT_UNFUSED, RequantOpSig


# ----------------------------------------------------------------------------- the algebra
def _grid(L):
    v = torch.arange(1 << L)
    u, r = torch.meshgrid(v, v, indexing="ij")
    return u.reshape(-1), r.reshape(-1)


@pytest.mark.parametrize("L", [2, 3, 4, 5, 6])
def test_truncation_with_wrap_and_borrow(L):
    u, r = _grid(L)
    c = (u + r) % (1 << L)
    w = (c < r).long()
    for k in range(L):
        b = ((c % (1 << k)) < (r % (1 << k))).long()
        assert torch.equal(u >> k, (c >> k) - (r >> k) - b + w * (1 << (L - k)))


@pytest.mark.parametrize("L", [2, 3, 4, 5])
def test_rabbit_threshold_identity(L):
    u, r = _grid(L)
    c = (u + r) % (1 << L)
    w = c < r
    for T in range(1, 1 << L):
        cT = (c - T) % (1 << L)
        got = (c >= T) ^ w ^ (cT < r)
        assert torch.equal(got, u >= T)


@pytest.mark.parametrize("L", [2, 3, 4, 5])
def test_msb_threshold_identity(L):
    u, r = _grid(L)
    H = 1 << (L - 1)
    c = (u + r) % (1 << L)
    for T in range(0, 1 << L):
        ok = (u - T >= -H) & (u - T < H)
        C = (c - T + H) % (1 << L)
        beta = (r % H) > (C % H)
        got = ((C >> (L - 1)) & 1).bool() ^ ((r >> (L - 1)) & 1).bool() ^ beta
        assert torch.equal(got[ok], (u >= T)[ok])
        # and below the MSB, x_low = u - T (when u >= T) is C_low - r_low + beta*H
        sel = ok & (u >= T)
        assert torch.equal(((C % H) - (r % H) + beta.long() * H)[sel], (u - T)[sel])


# ----------------------------------------------------------------------------- protocol runs
def _reference(sig, t):
    op = requant_op(sig.shift, sig.lo, sig.hi, [[1]], [0])
    return apply_op(op, [t.reshape(-1, 1)], None).reshape(-1)


def _inputs(sig, g, limit=160):
    """All of [tlo, thi] when small, else edges, thresholds +-1 and random values."""
    lo, hi = sig.tlo, sig.thi
    if hi - lo + 1 <= limit:
        return torch.arange(lo, hi + 1)
    k = min(sig.shift, sig.ell - 1)
    cand = [lo, lo + 1, hi, hi - 1, 0, -1, 1]
    for z in (sig.lo, sig.hi + 1):
        for d in (-2, -1, 0, 1):
            cand.append(z * (1 << k) + d)
    cand = [v for v in cand if lo <= v <= hi]
    span = hi - lo + 1
    rnd = (torch.randint(0, 1 << 62, (limit - len(cand),), generator=g) % span) + lo
    return torch.cat([torch.tensor(cand, dtype=torch.int64), rnd])


def _run_core(sig, t, dealer, seed=0):
    sig = rq.RequantSig(
        t.numel(), sig.ell, sig.shift, sig.lo, sig.hi, sig.tlo, sig.thi, sig.ell_out
    )
    t0, t1 = share(t, sig.ell, seed)
    opsig = RequantOpSig((t.numel(), 1), ((1,),), (0,), sig)
    run = run_protocol(
        REQUANT, opsig, (t0.reshape(-1, 1),), (t1.reshape(-1, 1),), dealer=dealer, master=seed
    )
    q = ring.reconstruct(run.out0, run.out1, sig.ell_out).reshape(-1)
    return sig, q, run


@st.composite
def requant_sigs(draw):
    L = draw(st.one_of(st.integers(2, 16), st.integers(2, 16), st.integers(17, 40)))
    H = 1 << (L - 1)
    if draw(st.booleans()):
        tlo, thi = -H, H - 1
    else:
        tlo = draw(st.integers(-H, H - 2))
        thi = draw(st.integers(tlo + 1, H - 1))
    kmax = max(0, (thi - tlo).bit_length() - 3)  # mostly leave several distinct z values
    shift = draw(st.integers(0, kmax)) if draw(st.integers(0, 4)) else draw(st.integers(0, L + 1))
    k = min(shift, L - 1)
    zlo, zhi = tlo >> k, thi >> k
    span = zhi - zlo + 4
    fa = draw(st.integers(0, 63))
    fb = draw(st.integers(fa + 1, 64))
    kind = draw(st.sampled_from(["relu", "relu", "any", "any", "noclip"]))
    if kind == "relu":
        lo = 0
        hi = (
            draw(st.sampled_from([1, 3, 15, 63, 255]))
            if draw(st.booleans())
            else max(0, zlo + span * fb // 64)
        )
    elif kind == "noclip":
        lo, hi = -(1 << 45), 1 << 45
    else:
        lo, hi = zlo - 2 + span * fa // 64, zlo - 2 + span * fb // 64
    qlo, qhi = min(max(zlo, lo), hi), min(max(zhi, lo), hi)
    ell_out = min(62, signed_bits(qlo, qhi) + draw(st.integers(0, 12)))
    return rq.RequantSig(1, L, shift, lo, hi, tlo, thi, ell_out)


@settings(deadline=None, max_examples=250)
@given(
    sig=requant_sigs(), seed=st.integers(0, 2**31), dealer=st.sampled_from(["simulated", "thread"])
)
def test_requant_exact_and_cost(sig, seed, dealer):
    g = torch.Generator().manual_seed(seed)
    t = _inputs(sig, g)
    sig, q, run = _run_core(sig, t, dealer, seed)
    assert torch.equal(q, _reference(sig, t)), (sig, sig.plan)
    assert_cost(run, rq.FUSED.cost(sig))


H20 = 1 << 19
MODE_CASES = [
    # (sig fields: ell, shift, lo, hi, tlo, thi, ell_out) -> (kind, form)
    ((20, 12, 0, 15, -H20, H20 - 1, 20), ("msb", "adom")),  # the usual ReLU + clip
    ((20, 12, 0, 255, -H20, H20 - 1, 20), ("msb", "s")),  # no upper clip needed
    ((16, 4, -8, 7, -(1 << 10), 1 << 10, 8), ("msb", "s")),  # narrow range: both tests valid
    ((8, 0, -40, -1, -128, 127, 8), ("msb", "hdom")),  # signed clip below zero
    ((8, 0, -40, 2, -128, 64, 8), ("msb", "adom")),
    ((8, 0, -40, -37, -128, 127, 8), ("rabbit", "s")),  # narrow clip far from 0: fallback
    ((12, 3, -(1 << 20), 1 << 20, -2048, 2047, 12), ("rabbit", "s")),  # pure truncation
    ((12, 0, 5, 5, -2048, 2047, 9), ("const", "s")),
    ((12, 0, -(1 << 20), 1 << 20, -200, 300, 10), ("local", "s")),  # ring reduction only
    ((10, 0, -(1 << 20), 1 << 20, -200, 300, 30), ("msb", "s")),  # extension only
    ((10, 12, -1, 3, -512, 511, 4), ("rabbit", "s")),  # k >= L: the sign
]


@pytest.mark.parametrize("fields,expect", MODE_CASES)
@pytest.mark.parametrize("dealer", ["simulated", "thread"])
def test_requant_modes(fields, expect, dealer):
    sig = rq.RequantSig(1, *fields)
    assert (sig.plan.kind, sig.plan.form) == expect
    t = _inputs(sig, torch.Generator().manual_seed(1), limit=200)
    sig, q, run = _run_core(sig, t, dealer)
    assert torch.equal(q, _reference(sig, t))
    assert_cost(run, rq.FUSED.cost(sig))


def test_requant_headline_numbers():
    """L=20, k=12, L'=20 (ReLU + 4-bit clip): per element 92 online bits, 133 offline, 6 rounds
    (3-bit comparison digits, selection in Z_2^5 then one lift; with bit leaves and the selection
    in Z_2^20 it was 184 / 364 / 7)."""
    n = 100
    sig = rq.RequantSig(n, 20, 12, 0, 15, -H20, H20 - 1, 20)
    c = rq.FUSED.cost(sig)
    assert sig.plan.group.d == 3 and sig.plan.lift and sig.plan.ell_poly == 5
    assert (c.online_bits / n, c.offline_bits / n, c.rounds) == (92, 133, 6)
    u = rq.UNFUSED.cost(sig)
    assert u.online_bits > 1.5 * c.online_bits and u.rounds == 2 * c.rounds


@pytest.mark.parametrize(
    "bad",
    [
        dict(shift=-1),
        dict(lo=3, hi=2),
        dict(tlo=-(1 << 20)),
        dict(ell_out=3),
        dict(ell=63),
    ],
)
def test_requant_rejects_bad_signatures(bad):
    from privquant.errors import PrivQuantError

    base = dict(n=1, ell=12, shift=2, lo=0, hi=100, tlo=-2048, thi=2047, ell_out=9)
    with pytest.raises(PrivQuantError):
        rq.plan_requant(rq.RequantSig(**{**base, **bad}))


# ----------------------------------------------------------------------------- unfused ablation
@settings(deadline=None, max_examples=60)
@given(sig=requant_sigs(), seed=st.integers(0, 2**31))
def test_requant_unfused_exact_and_cost(sig, seed):
    g = torch.Generator().manual_seed(seed)
    t = _inputs(sig, g, limit=60)
    sig = rq.RequantSig(
        t.numel(), sig.ell, sig.shift, sig.lo, sig.hi, sig.tlo, sig.thi, sig.ell_out
    )
    t0, t1 = share(t, sig.ell, seed)
    opsig = RequantOpSig((t.numel(), 1), ((1,),), (0,), sig)
    run = run_protocol(
        REQUANT_UNFUSED,
        opsig,
        (t0.reshape(-1, 1),),
        (t1.reshape(-1, 1),),
        dealer="simulated",
        master=seed,
    )
    q = ring.reconstruct(run.out0, run.out1, sig.ell_out).reshape(-1)
    assert torch.equal(q, _reference(sig, t))
    assert_cost(run, rq.UNFUSED.cost(sig))
    assert REQUANT_UNFUSED.cost(opsig) == rq.UNFUSED.cost(sig)


# ----------------------------------------------------------------------------- op level
def _residual_program(C=3, bits=6):
    x0 = TensorInfo("x0", (C, 4, 4), -(1 << 14), 1 << 14)
    x1 = TensorInfo("x1", (C, 4, 4), 0, (1 << bits) - 1)
    y = TensorInfo("y", (C, 4, 4), 0, (1 << bits) - 1)
    op = requant_op(9, 0, (1 << bits) - 1, [[3, 5, 7][:C], [200, 180, 90][:C]], [256, 255, 100][:C])
    op.inputs = ["x0", "x1"]
    ops = [Op("input", "in0", [], "x0"), Op("input", "in1", [], "x1"), op]
    return Program("toy", ops, {"x0": x0, "x1": x1, "y": y}), op


@pytest.mark.parametrize("dealer", ["simulated", "thread"])
def test_requant_op_residual_presum(dealer):
    prog, op = _residual_program()
    rings = ring_bits(prog)
    sig = signature(op, prog, rings, batch=2)
    assert sig.core.ell <= min(rings["x0"], rings["x1"])
    g = torch.Generator().manual_seed(4)
    xs = [
        torch.randint(prog.tensors[n].lo, prog.tensors[n].hi + 1, (2, 3, 4, 4), generator=g)
        for n in ("x0", "x1")
    ]
    sh = [share(x, rings[n], i) for i, (x, n) in enumerate(zip(xs, ("x0", "x1")))]
    run = run_protocol(REQUANT, sig, (sh[0][0], sh[1][0]), (sh[0][1], sh[1][1]), dealer=dealer)
    q = ring.reconstruct(run.out0, run.out1, rings["y"])
    assert torch.equal(q, apply_op(op, xs, prog))
    assert_cost(run, REQUANT.cost(sig))
    assert np.prod(sig.shape) == sig.core.n


@pytest.mark.parametrize("L", [2, 3, 4, 5, 6, 7, 8])
def test_requant_sweep_small_rings(L):
    """Many random signatures per small ring, every t of the range, both thresholds near it."""
    rnd = np.random.default_rng(L)
    H = 1 << (L - 1)
    for i in range(80):
        tlo, thi = sorted(int(v) for v in rnd.integers(-H, H, 2))
        if i % 3 == 0:
            tlo, thi = -H, H - 1
        shift = int(rnd.integers(0, L + 2))
        k = min(shift, L - 1)
        zlo, zhi = tlo >> k, thi >> k
        lo = int(rnd.integers(zlo - 2, zhi + 2))
        hi = int(rnd.integers(lo, zhi + 3))
        if i % 5 == 0:
            lo = 0
        hi = max(hi, lo)
        qlo, qhi = min(max(zlo, lo), hi), min(max(zhi, lo), hi)
        ell_out = min(62, signed_bits(qlo, qhi) + int(rnd.integers(0, 10)))
        sig = rq.RequantSig(1, L, shift, lo, hi, tlo, thi, ell_out)
        t = torch.arange(tlo, thi + 1).repeat(3)
        sig, q, run = _run_core(sig, t, "simulated", seed=i)
        assert torch.equal(q, _reference(sig, t)), (sig, sig.plan)
        assert_cost(run, rq.FUSED.cost(sig))
