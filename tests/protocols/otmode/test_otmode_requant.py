"""Dealer-free fused requantization: bit-exact against the plaintext semantics for every plan
kind (const, local, extend, msb s/adom/hdom, rabbit; lifted or not), measured == declared cost
per phase (bits and rounds, offline included), the unfused ablation and the op wrapper."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from otmode_lib import requant_inputs, requant_reference, run_protocol, share

from privquant.protocols.ot.requant import (
    OT_FUSED,
    OT_REQUANT,
    OT_REQUANT_UNFUSED,
    OT_UNFUSED,
    plan_ot,
)
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.ring import signed_bits
from privquant.protocols.requant import RequantOpSig, RequantSig


@st.composite
def requant_sigs(draw):
    L = draw(st.one_of(st.integers(2, 16), st.integers(2, 16), st.integers(17, 44)))
    H = 1 << (L - 1)
    if draw(st.booleans()):
        tlo, thi = -H, H - 1
    else:
        tlo = draw(st.integers(-H, H - 2))
        thi = draw(st.integers(tlo + 1, H - 1))
    kmax = max(0, (thi - tlo).bit_length() - 3)
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
    return RequantSig(1, L, shift, lo, hi, tlo, thi, ell_out)


def _run(proto, sig, t, seed=0):
    sig = RequantSig(t.numel(), sig.ell, sig.shift, sig.lo, sig.hi, sig.tlo, sig.thi, sig.ell_out)
    t0, t1 = share(t, sig.ell, seed)
    opsig = RequantOpSig((t.numel(), 1), ((1,),), (0,), sig)
    out0, out1, cost, _ = run_protocol(proto, opsig, (t0.reshape(-1, 1),), (t1.reshape(-1, 1),))
    q = ring.reconstruct(out0, out1, sig.ell_out).reshape(-1)
    return sig, opsig, q, cost


@settings(deadline=None, max_examples=60)
@given(sig=requant_sigs(), seed=st.integers(0, 2**31))
def test_ot_requant_exact_and_cost(sig, seed):
    t = requant_inputs(sig, torch.Generator().manual_seed(seed), limit=96)
    sig, opsig, q, cost = _run(OT_REQUANT, sig, t, seed)
    assert torch.equal(q, requant_reference(sig, t)), (sig, plan_ot(sig))
    assert cost == OT_FUSED.full_cost(sig) == OT_REQUANT.full_cost(opsig)


H20 = 1 << 19
MODE_CASES = [
    # (ell, shift, lo, hi, tlo, thi, ell_out) -> (kind, form, lifted)
    ((20, 12, 0, 15, -H20, H20 - 1, 20), ("msb", "adom", True)),  # the usual ReLU + clip
    ((20, 12, 0, 255, -H20, H20 - 1, 20), ("msb", "s", True)),
    ((16, 4, -8, 7, -(1 << 10), 1 << 10, 8), ("msb", "s", False)),
    ((8, 0, -40, -1, -128, 127, 8), ("msb", "hdom", False)),
    ((8, 0, -40, 2, -128, 64, 8), ("msb", "adom", False)),
    ((8, 0, -40, -37, -128, 127, 8), ("rabbit", "s", False)),
    ((12, 3, -(1 << 20), 1 << 20, -2048, 2047, 12), ("rabbit", "s", False)),  # truncation
    ((12, 0, 5, 5, -2048, 2047, 9), ("const", "s", False)),
    ((12, 0, -(1 << 20), 1 << 20, -200, 300, 10), ("local", "s", False)),
    ((10, 0, -(1 << 20), 1 << 20, -200, 300, 30), ("extend", "s", False)),  # known-MSB lift
    ((10, 12, -1, 3, -512, 511, 4), ("rabbit", "s", False)),  # k >= L: the sign
    ((32, 0, 0, (1 << 31) - 1, -(1 << 31), (1 << 31) - 1, 32), ("msb", "s", False)),  # ReLU
    ((16, 8, -128, 127, -(1 << 15), (1 << 15) - 1, 8), ("rabbit", "s", False)),  # trunc+reduce
    ((14, 2, 0, 5, -(1 << 13), (1 << 13) - 1, 40), ("msb", "adom", True)),  # wide lift
]


@pytest.mark.parametrize("fields,expect", MODE_CASES)
def test_ot_requant_modes(fields, expect):
    sig = RequantSig(1, *fields)
    p = plan_ot(sig)
    assert (p.kind, p.form, p.lift) == expect
    t = requant_inputs(sig, torch.Generator().manual_seed(1), limit=200)
    sig, _opsig, q, cost = _run(OT_REQUANT, sig, t)
    assert torch.equal(q, requant_reference(sig, t))
    assert cost == OT_FUSED.full_cost(sig)


def test_ot_requant_relu_in_its_own_ring_needs_no_wrap_bit():
    """With P0's full ``c`` and P1's full ``r`` the MSB-form difference is exact mod ``2^L``:
    ReLU at ``L' = L`` and ReLU into ``Z_2^(L-k)`` need no ``x`` variable (the dealer form does)."""
    for sig in (
        RequantSig(8, 32, 0, 0, (1 << 31) - 1, -(1 << 31), (1 << 31) - 1, 32),
        RequantSig(8, 20, 7, 0, (1 << 12) - 1, -(1 << 19), (1 << 19) - 1, 13),
    ):
        p = plan_ot(sig)
        assert p.kind == "msb" and not p.lift and not p.need_x
        assert sig.plan.need_x


@settings(deadline=None, max_examples=12)
@given(sig=requant_sigs(), seed=st.integers(0, 2**31))
def test_ot_requant_unfused(sig, seed):
    t = requant_inputs(sig, torch.Generator().manual_seed(seed), limit=48)
    sig, _opsig, q, cost = _run(OT_REQUANT_UNFUSED, sig, t, seed)
    assert torch.equal(q, requant_reference(sig, t))
    assert cost == OT_UNFUSED.full_cost(sig)


def test_ot_requant_residual_presum():
    """Two inputs with per-channel multipliers and offset (a residual add), batch 2."""
    g = torch.Generator().manual_seed(5)
    shape = (2, 3, 4, 4)
    a = torch.randint(0, 16, shape, generator=g)
    b = torch.randint(-40, 40, shape, generator=g)
    mults, offset = ((3, 5, 7), (11, -2, 4)), (8, 8, 8)
    ca = torch.tensor(mults[0]).reshape(1, 3, 1, 1)
    cb = torch.tensor(mults[1]).reshape(1, 3, 1, 1)
    t = a * ca + b * cb + 8
    tlo, thi = -600, 600
    L = signed_bits(tlo, thi)
    core = RequantSig(a.numel(), L, 4, 0, 15, tlo, thi, 16)
    opsig = RequantOpSig(shape, mults, offset, core)
    a0, a1 = share(a, L, 1)
    b0, b1 = share(b, L, 2)
    out0, out1, cost, _ = run_protocol(OT_REQUANT, opsig, (a0, b0), (a1, b1))
    q = ring.reconstruct(out0, out1, 16)
    assert torch.equal(q, (t >> 4).clamp(0, 15))
    assert cost == OT_REQUANT.full_cost(opsig)


def test_ot_requant_per_element_costs_at_the_sci_widths():
    """ReLU, truncation, truncate-and-reduce: at most SCI's bytes per element (and about half)."""
    n = 1000
    h15, h31 = 1 << 15, 1 << 31
    cases = {
        ("relu", 8): (RequantSig(n, 8, 0, 0, 127, -128, 127, 8), 124.5),
        ("relu", 16): (RequantSig(n, 16, 0, 0, h15 - 1, -h15, h15 - 1, 16), 254),
        ("relu", 32): (RequantSig(n, 32, 0, 0, h31 - 1, -h31, h31 - 1, 32), 531.5),
        ("trunc", 16): (RequantSig(n, 16, 8, -128, 127, -(1 << 15), (1 << 15) - 1, 16), 251.5),
        ("trunc", 32): (
            RequantSig(n, 32, 12, -(1 << 19), (1 << 19) - 1, -(1 << 31), (1 << 31) - 1, 32),
            524.5,
        ),
    }
    for (_op, _ell), (sig, sci) in cases.items():
        c = OT_FUSED.full_cost(sig)
        per = (c.online_bits + c.offline_bits) / 8 / n
        assert per <= 0.5 * sci, (_op, _ell, per, sci)


def test_ot_requant_other_k():
    """The same protocol for SoftSpokenOT k = 8 (half the OT bits): exact and costed; a provider
    with another k is refused with one clear line."""
    from privquant.errors import PrivQuantError
    from privquant.protocols.ot import for_k

    sig = RequantSig(1, 20, 12, 0, 15, -H20, H20 - 1, 20)
    t = requant_inputs(sig, torch.Generator().manual_seed(2), limit=64)
    proto = for_k(OT_REQUANT, 8)
    sig = dataclasses.replace(sig, n=t.numel())
    opsig = RequantOpSig((t.numel(), 1), ((1,),), (0,), sig)
    t0, t1 = share(t, sig.ell)
    out0, out1, cost, _ = run_protocol(
        proto, opsig, (t0.reshape(-1, 1),), (t1.reshape(-1, 1),), k=8
    )
    assert torch.equal(ring.reconstruct(out0, out1, 20).reshape(-1), requant_reference(sig, t))
    assert cost == proto.full_cost(opsig)
    assert cost.offline_bits < 0.6 * OT_REQUANT.full_cost(opsig).offline_bits
    with pytest.raises(PrivQuantError, match="k=4"):
        run_protocol(proto, opsig, (t0.reshape(-1, 1),), (t1.reshape(-1, 1),), k=4)
