"""Dealer-free lookup tables and secret products (``ot`` mode): bit-exact against the plaintext
(the op kinds' ``apply``) under hypothesis over shapes, widths and edge values, measured bits and
rounds == the declared closed forms per phase, hostile shapes rejected; the zoo models with
lookup activations, products, concatenations and affine maps cost in ``ot`` mode and run end to
end with logits identical to the plaintext program."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from otmode_lib import run_pair, run_protocol, share

from privquant import ops
from privquant.errors import PeerError, PrivQuantError
from privquant.protocols.lut import LutSig
from privquant.protocols.mul import MulSig
from privquant.protocols.ot import for_k
from privquant.protocols.ot.common import rot_bits
from privquant.protocols.ot.lut import OT_LUT, OtLut, plan
from privquant.protocols.ot.mul import OT_MUL, OtMul
from privquant.protocols.primitives import ring

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: zoo, runtime_helpers


# ----------------------------------------------------------------------------- lookup tables
@st.composite
def lut_cases(draw):
    nb = draw(st.integers(0, 8))
    ell = draw(st.integers(2, 62))
    w = draw(st.integers(1, min(ell, 24)))  # the output's signed width
    out_lo = draw(st.integers(-(1 << (w - 1)), 0))
    out_hi = draw(st.integers(out_lo, (1 << (w - 1)) - 1))
    size = 1 << nb
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(out_lo, out_hi + 1, (size,), generator=g)
    table[0], table[-1] = out_lo, out_hi  # the range's edges
    lo = draw(st.integers(-300, 300))
    n = draw(st.integers(1, 40))
    idx = torch.randint(0, size, (n,), generator=g)
    idx[0], idx[-1] = 0, size - 1  # the table's first and last entry
    l_in = draw(st.integers(max(nb, 2), 62))  # the input's ring (any width >= nb)
    sig = LutSig(n, nb, lo, tuple(int(v) for v in table), out_lo, out_hi, ell)
    return sig, lo + idx, l_in, seed


def _lut_plain(sig: LutSig, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(sig.table, dtype=torch.int64)[x - sig.lo]


@settings(deadline=None, max_examples=25)
@given(case=lut_cases())
def test_lut_exact_and_cost(case):
    sig, x, l_in, seed = case
    x0, x1 = share(x, l_in, seed)
    y0, y1, cost, _ = run_protocol(OT_LUT, sig, (x0,), (x1,))
    y = ring.to_signed(ring.reduce(y0 + y1, sig.ell), sig.ell)
    assert torch.equal(y, _lut_plain(sig, x))
    assert y0.shape == x.shape
    assert cost == OT_LUT.full_cost(sig)


def _lut_closed_form(k: int, sig: LutSig) -> tuple[int, int, int]:
    """(online, offline, rounds) from the module docstring's table, independently of the code."""
    kind, t = plan(k, sig)
    n, nb, size, o, L = sig.n, sig.nb, 1 << sig.nb, rot_bits(k), sig.ell
    if kind == "const":
        return 0, 0, 0
    if kind == "direct":
        return n * (nb + size * L), o * n * nb, 2
    return n * (nb + size * t) + n * (L - t + 1), o * n * (nb + 1), 3


def test_lut_plans_and_closed_forms():
    silu6 = LutSig(1000, 6, -32, tuple([-3] * 32 + [12] * 32), -3, 12, 16)
    assert plan(4, silu6) == ("lift", 5)
    c = OT_LUT.cost(silu6)
    assert (c.online_bits, c.offline_bits) == (338_000, 217_000)
    wide = LutSig(10, 3, 0, tuple(range(-100, 100, 25)), -100, 100, 9)  # m = 9 = ell
    assert plan(4, wide) == ("direct", 9)
    const = LutSig(7, 0, 5, (-4,), -4, -4, 8)
    assert plan(4, const) == ("const", 8)
    for k in (1, 2, 4, 8):
        for sig in (silu6, wide, const):
            c = for_k(OT_LUT, k).full_cost(sig)
            assert (c.online_bits, c.offline_bits, c.online_rounds) == _lut_closed_form(k, sig)


def test_lut_against_sci_lookup():
    """SCI's lookup (a KKOT with W-bit messages after truncating W to the index bits) costs
    several times the dealer-free lookup on the same index, output and ring."""
    from privquant.baselines import sci

    for nb, w, floor in ((4, 16, 7.0), (6, 16, 4.5), (8, 16, 3.2), (6, 32, 10.0)):
        half = 1 << (nb - 1)
        sig = LutSig(1, nb, 0, tuple([-3] * half + [12] * half), -3, 12, w)
        ours = OT_LUT.cost(sig)
        theirs = sci.truncate_and_reduce(w, w - nb) + sci.kkot(1 << nb, w)
        assert theirs.bits / (ours.online_bits + ours.offline_bits) >= floor


def test_lut_other_k_and_hostile_inputs():
    sig = LutSig(6, 3, -4, (0, 1, 2, 3, 3, 2, 1, 0), 0, 3, 12)
    x = torch.tensor([-4, -3, 0, 1, 3, 2])
    x0, x1 = share(x, 12, 5)
    proto = for_k(OT_LUT, 2)
    y0, y1, cost, _ = run_protocol(proto, sig, (x0,), (x1,), k=2)
    assert torch.equal(ring.reduce(y0 + y1, 12), _lut_plain(sig, x))
    assert cost == proto.full_cost(sig) != OT_LUT.full_cost(sig)
    with pytest.raises(PrivQuantError, match="k=4"):
        run_protocol(OtLut(k=2), sig, (x0,), (x1,))  # costed for k=2, session uses k=4
    with pytest.raises(PrivQuantError, match="6 elements"):
        run_protocol(OT_LUT, sig, (x0[:5],), (x1[:5],))
    with pytest.raises(PrivQuantError, match="outside"):
        OT_LUT.cost(LutSig(6, 3, -4, (0, 1, 2, 3, 3, 2, 1, 9), 0, 3, 12))


def _disagreeing(proto, sig0, sig1, ins0, ins1):
    def body(sig, ins):
        def fn(corr):
            return proto.online(corr.party, sig, proto.offline(corr, sig), *ins)

        return fn

    return run_pair(body(sig0, ins0), body(sig1, ins1), timeout=20)


def test_hostile_peer_is_a_peer_error():
    """A peer whose messages disagree with the public signature (more elements, another table
    width) fails with PeerError within the timeout, for both protocols."""
    table = (0, 1, 2, 3, 3, 2, 1, 0)
    a = LutSig(6, 3, -4, table, 0, 3, 12)
    b = LutSig(7, 3, -4, table, 0, 3, 12)
    x = torch.zeros(7, dtype=torch.int64)
    with pytest.raises(PeerError):
        _disagreeing(OT_LUT, a, b, (x[:6],), (x,))
    c = LutSig(6, 3, -4, table, 0, 3, 20)  # another output ring: the lift sends other widths
    with pytest.raises(PeerError):
        _disagreeing(OT_LUT, a, c, (x[:6],), (x[:6],))
    m0, m1 = MulSig((2, 3), (2, 3), 16), MulSig((2, 3), (2, 3), 17)
    z = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(PeerError):
        _disagreeing(OT_MUL, m0, m1, (z, z), (z, z))


# ----------------------------------------------------------------------------- products
@st.composite
def mul_cases(draw):
    ell = draw(st.integers(2, 62))
    square = draw(st.booleans())
    base = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))

    def bshape():
        return tuple(d if draw(st.booleans()) else 1 for d in base)

    xs = base if square else bshape()
    ys = xs if square else bshape()
    seed = draw(st.integers(0, 2**31))
    return MulSig(xs, ys, ell, square), seed


def _ring_values(g, shape, ell):
    v = ring.uniform(g, shape, ell)
    edges = torch.tensor([0, (1 << ell) - 1, 1 << (ell - 1), (1 << (ell - 1)) - 1, 1])
    k = min(v.numel(), len(edges))
    v.view(-1)[:k] = edges[:k]
    return v


@settings(deadline=None, max_examples=25)
@given(case=mul_cases())
def test_mul_exact_and_cost(case):
    sig, seed = case
    g = torch.Generator().manual_seed(seed)
    x = _ring_values(g, sig.x_shape, sig.ell)
    y = x if sig.square else _ring_values(g, sig.y_shape, sig.ell).flip(-1)
    x0, x1 = share(x, sig.ell, seed)
    y0, y1 = (x0, x1) if sig.square else share(y, sig.ell, seed + 1)
    z0, z1, cost, _ = run_protocol(OT_MUL, sig, (x0, y0), (x1, y1))
    assert torch.equal(ring.reduce(z0 + z1, sig.ell), ring.reduce(x * y, sig.ell))
    assert cost == OT_MUL.full_cost(sig)


def _mul_closed_form(k: int, sig: MulSig) -> tuple[int, int, int]:
    n = lambda s: int(torch.Size(s).numel())  # noqa: E731
    nx, ny, nz, L, o = n(sig.x_shape), n(sig.y_shape), n(sig.z_shape), sig.ell, rot_bits(k)
    if sig.square:
        return nz * (L - 1) + nz * (L - 1) * L // 2, o * nz * (L - 1), 1
    na = min(nx, ny)
    return 2 * na * L + nz * L * (L + 1), 2 * o * na * L, 1


def test_mul_closed_forms_and_choice():
    sigs = [
        MulSig((1000,), (1000,), 16),
        MulSig((1000,), (1000,), 16, True),
        MulSig((1, 16, 1, 1), (1, 16, 14, 14), 18),  # a squeeze-and-excitation gate
        MulSig((2, 3, 1), (1, 1, 5), 30),
    ]
    for k in (2, 4):
        for sig in sigs:
            c = for_k(OT_MUL, k).full_cost(sig)
            assert (c.online_bits, c.offline_bits, c.online_rounds) == _mul_closed_form(k, sig)
    # L = 16: 304 online + 992 offline bits per element; Beaver triples made by the same COT
    # products would take 64 online + 1264 offline (more in total)
    c = OT_MUL.cost(sigs[0])
    assert (c.online_bits, c.offline_bits) == (304_000, 992_000)
    triples = 4 * 1000 * 16 + (2 * 31 * 16 + 16 * 17) * 1000
    assert c.online_bits + c.offline_bits < triples
    # the gate's OTs are per channel, not per product
    gate = OT_MUL.full_cost(sigs[2])
    assert gate.offline_bits == 2 * 31 * 16 * 18


def test_mul_hostile_shapes():
    sig = MulSig((2, 3), (2, 3), 16)
    z = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(PrivQuantError, match="shapes"):
        run_protocol(OT_MUL, sig, (z, z[:, :2]), (z, z[:, :2]))
    with pytest.raises(PrivQuantError, match="square"):
        OtMul().full_cost(MulSig((2, 3), (2, 1), 16, True))
    with pytest.raises(PrivQuantError, match="broadcast"):
        OT_MUL.full_cost(MulSig((2, 3), (2, 4), 16))


# ----------------------------------------------------------------------------- programs
ZOO_OT = ("gelu-mlp", "mobile-silu", "cat-mul", "norm", "norm-fold")


@pytest.fixture(scope="module")
def zoo_w4a4():
    from zoo import build

    import privquant
    from privquant.models.calibration import load_calibration

    cache: dict = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = privquant.quantize(
                build(name), load_calibration(32), "w4a4", name=name, progress=False
            )
        return cache[name]

    return get


def test_local_kinds_are_dealer_free():
    """concat is local (its dealer protocol needs no correlation); public affine maps have no op
    kind of their own (they lower to a requant, which has an ot protocol)."""
    from privquant.ops.concat import CONCAT, ConcatSig

    assert ops.protocol("concat", "privquant", "ot") is CONCAT and CONCAT.dealer_free
    assert CONCAT.needs(ConcatSig(((1, 2, 3, 3), (1, 4, 3, 3)), 16)) == []
    assert CONCAT.cost(ConcatSig(((1, 2, 3, 3),), 16), "ot").online_bits == 0
    with pytest.raises(PrivQuantError):
        ops.get("affine")
    assert isinstance(ops.protocol("lut", "privquant", "ot"), OtLut)
    assert isinstance(ops.protocol("mul", "privquant", "ot"), OtMul)


@pytest.mark.parametrize("name", ZOO_OT)
def test_zoo_costs_in_ot_mode(zoo_w4a4, name):
    from privquant.costs import program_cost

    art = zoo_w4a4(name)
    from privquant.program import ring_bits

    total, scopes = program_cost(art.program, preprocessing="ot")
    assert total.online_bits > 0 and total.rounds > 0
    kinds = {op.kind for op in art.program.ops}
    rings = ring_bits(art.program)
    for op in art.program.ops:
        if op.kind in ("lut", "mul"):
            proto = OT_LUT if op.kind == "lut" else OT_MUL
            c = proto.cost(ops.signature(op, art.program, rings, 1))
            assert c.online_bits > 0 and c.offline_bits > 0
            assert scopes[op.name].online_bits >= c.online_bits
    assert "lut" in kinds
    assert name != "cat-mul" or {"mul", "concat"} <= kinds
    assert name != "mobile-silu" or "mul" in kinds


@pytest.mark.parametrize("name", ZOO_OT)
def test_zoo_end_to_end_ot_mode(zoo_w4a4, name):
    """Server and client alone (threads, the real roles): logits identical to the plaintext
    integer program, every layer's measured bits equal the declared and its rounds the per-party
    clock model."""
    from test_otmode_runtime import _check_declared, run_ot

    from privquant.models.calibration import load_calibration
    from privquant.program import run_plain

    art = zoo_w4a4(name)
    x = load_calibration(34)[32:34] if name == "cat-mul" else load_calibration(33)[32:]
    logits, report, _, _ = run_ot(art.program, x)
    assert torch.equal(logits, run_plain(art.program, x))
    _check_declared(art.program, report, int(x.shape[0]))
