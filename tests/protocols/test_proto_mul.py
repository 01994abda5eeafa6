"""Beaver product of two secrets (with broadcasting, and squares): exact, measured == cost()."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_testlib import assert_cost, share

from privquant.errors import PrivQuantError
from privquant.protocols.harness import run_protocol
from privquant.protocols.mul import MUL, MulSig
from privquant.protocols.primitives import ring

SHAPES = [
    ((2, 3, 4, 4), (2, 3, 4, 4)),
    ((2, 3, 4, 4), (2, 3, 1, 1)),
    ((1, 5), (1, 1)),
    ((3,), (3,)),
]


@settings(deadline=None, max_examples=40)
@given(
    shapes=st.sampled_from(SHAPES),
    ell=st.integers(2, 62),
    square=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    dealer=st.sampled_from(["thread", "simulated"]),
)
def test_mul_exact_and_cost(shapes, ell, square, seed, dealer):
    xs, ys = shapes
    if square:
        ys = xs
    gen = torch.Generator().manual_seed(seed)
    half = 1 << (ell - 1)
    x = ring.uniform(gen, xs, ell) - half  # anywhere in the signed ring, products wrap
    y = x if square else ring.uniform(gen, ys, ell) - half
    x.view(-1)[0] = -half  # ring boundaries
    if not square:
        y.view(-1)[-1] = half - 1
    sig = MulSig(xs, ys, ell, square)
    x0, x1 = share(x, ell, seed)
    y0, y1 = (x0, x1) if square else share(y, ell, seed + 1)
    args0, args1 = ((x0,), (x1,)) if square else ((x0, y0), (x1, y1))
    run = run_protocol(MUL, sig, args0, args1, dealer=dealer, master=seed)
    got = ring.reconstruct(run.out0, run.out1, ell)
    assert torch.equal(got, ring.to_signed(ring.reduce(x * y, ell), ell))
    assert_cost(run, MUL.cost(sig))
    opened = x.numel() + (0 if square else y.numel())
    c = MUL.cost(sig)
    assert (c.online_bits, c.offline_bits, c.rounds) == (2 * opened * ell, got.numel() * ell, 1)


def test_mul_rejects_shapes():
    with pytest.raises(PrivQuantError, match="broadcast"):
        MUL.cost(MulSig((2, 3), (2, 4), 8))
