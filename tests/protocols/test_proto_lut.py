"""Secret table lookup (rotated one-hot vector): exact against the plaintext table, measured
bits and rounds == the declared ``cost()``, for every plan and edge inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_testlib import assert_cost, share

from privquant.errors import PrivQuantError
from privquant.protocols.harness import run_protocol
from privquant.protocols.lut import LUT, LutSig
from privquant.protocols.primitives import ring


def _table(gen, nb, out_lo, out_hi):
    t = torch.randint(out_lo, out_hi + 1, (1 << nb,), generator=gen)
    t[0], t[-1] = out_lo, out_hi  # both ends of the output range appear
    return tuple(int(v) for v in t)


def _run(sig: LutSig, x: torch.Tensor, ell_in: int, dealer: str, seed: int):
    x0, x1 = share(x, ell_in, seed)
    run = run_protocol(LUT, sig, (x0,), (x1,), dealer=dealer, master=seed)
    return ring.reconstruct(run.out0, run.out1, sig.ell), run


@settings(deadline=None, max_examples=60)
@given(
    nb=st.integers(1, 8),
    lo=st.integers(-300, 300),
    extra_in=st.integers(0, 20),
    out_bits=st.integers(1, 9),
    signed=st.booleans(),
    ell=st.integers(2, 40),
    n=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
    dealer=st.sampled_from(["thread", "simulated"]),
)
def test_lut_exact_and_cost(nb, lo, extra_in, out_bits, signed, ell, n, seed, dealer):
    out_lo, out_hi = (
        (-(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1)
        if signed
        else (
            0,
            (1 << out_bits) - 1,
        )
    )
    if ring.signed_bits(out_lo, out_hi) > ell:
        ell = ring.signed_bits(out_lo, out_hi)
    gen = torch.Generator().manual_seed(seed)
    table = _table(gen, nb, out_lo, out_hi)
    hi = lo + (1 << nb) - 1
    ell_in = max(ring.signed_bits(lo, hi) + extra_in, 2)
    x = torch.randint(lo, hi + 1, (n,), generator=gen)
    x[0] = lo
    x[-1] = hi  # the table's first and last entries
    sig = LutSig(n, nb, lo, table, out_lo, out_hi, ell)
    got, run = _run(sig, x, min(ell_in, 62), dealer, seed)
    want = torch.tensor(table)[x - lo]
    assert torch.equal(got, want)
    assert_cost(run, LUT.cost(sig))


@pytest.mark.parametrize(
    ("nb", "out", "ell", "plan"),
    [
        (4, (0, 15), 16, "lift"),
        (2, (0, 3), 16, "lift"),
        (8, (0, 255), 12, "lift"),
        (1, (0, 15), 6, "direct"),
    ],
)
def test_lut_plans(nb, out, ell, plan):
    gen = torch.Generator().manual_seed(1)
    sig = LutSig(64, nb, 0, _table(gen, nb, *out), *out, ell)
    assert sig.plan[0] == plan
    c = LUT.cost(sig)
    m = (out[1] - out[0]).bit_length() + 1
    n, size = 64, 1 << nb
    if plan == "lift":
        assert (c.online_bits, c.offline_bits, c.rounds) == (
            2 * n * nb + 2 * n,
            n * size * m + n * ell,
            2,
        )
    else:
        assert (c.online_bits, c.offline_bits, c.rounds) == (2 * n * nb, n * size * ell, 1)
    x = torch.arange(64) % size
    got, run = _run(sig, x, max(nb + 1, 2), "thread", 3)
    assert torch.equal(got, torch.tensor(sig.table)[x])
    assert_cost(run, c)


def test_lut_docstring_example():
    """4-bit GELU into a 16-bit ring: 10 online + 96 offline bits per element, 2 rounds."""
    sig = LutSig(1, 4, -8, tuple(range(16)), 0, 15, 16)
    c = LUT.cost(sig)
    assert (c.online_bits, c.offline_bits, c.rounds) == (10, 96, 2)


def test_lut_const_is_free():
    sig = LutSig(5, 0, 3, (7,), 7, 7, 10)
    x = torch.full((5,), 3)
    got, run = _run(sig, x, 4, "thread", 0)
    assert torch.equal(got, torch.full((5,), 7))
    assert_cost(run, LUT.cost(sig))
    assert LUT.cost(sig).online_bits == 0


@pytest.mark.parametrize(
    "sig",
    [
        LutSig(1, 2, 0, (0, 1, 2), 0, 3, 8),  # wrong length
        LutSig(1, 2, 0, (0, 1, 2, 9), 0, 3, 8),  # entry outside the range
        LutSig(1, 9, 0, tuple(range(512)), 0, 511, 12),  # too many index bits
        LutSig(1, 2, 0, (0, 1, 2, 3), 0, 300, 8),  # range does not fit the ring
    ],
)
def test_lut_rejects_bad_signatures(sig):
    with pytest.raises(PrivQuantError):
        LUT.cost(sig)


def test_lut_rejects_wrong_share_size():
    sig = LutSig(4, 2, 0, (0, 1, 2, 3), 0, 3, 8)
    x0, x1 = share(torch.zeros(5, dtype=torch.int64), 8)
    with pytest.raises(Exception, match="expects 4 elements"):
        run_protocol(LUT, sig, (x0,), (x1,), dealer="simulated", timeout=10)
