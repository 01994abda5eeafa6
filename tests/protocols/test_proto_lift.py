"""Lift of a small non-negative value from Z_2^m to Z_2^L: exact, and measured == cost()."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privquant.protocols import lift
from privquant.protocols.harness import run_roles
from privquant.protocols.primitives import ring


def _run(q0, q1, m, ell, dealer):
    run = run_roles(
        lambda corr: lift.LIFT.offline(corr, lift.LiftSig(q0.numel(), m, ell)),
        lambda p, pre, q: lift.LIFT.online(p, lift.LiftSig(q.numel(), m, ell), pre, q),
        (q0,),
        (q1,),
        dealer=dealer,
        master=5,
    )
    return run.out0, run.out1, run.stats


@settings(deadline=None, max_examples=100)
@given(
    m=st.integers(2, 12),
    extra=st.integers(1, 50),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    dealer=st.sampled_from(["thread", "simulated"]),
)
def test_lift_exact_and_cost(m, extra, n, seed, dealer):
    ell = min(m + extra, 62)
    g = torch.Generator().manual_seed(seed)
    top = 1 << (m - 1)
    q = torch.randint(0, top, (n,), generator=g)
    q[0], q[-1] = 0, top - 1  # edges: zero and the largest value with a known-zero MSB
    q0 = ring.uniform(g, (n,), m)
    # edge shares: q0 = 0 (no wrap) and q0 = 2^m - 1 (wrap unless q = 2^m - 1 - ...)
    q0[0] = 0
    if n > 1:
        q0[1] = (1 << m) - 1
    q1 = ring.reduce(q - q0, m)
    y0, y1, stats = _run(q0, q1, m, ell, dealer)
    assert torch.equal(ring.reconstruct(y0, y1, ell), q)
    c = lift.LIFT.cost(lift.LiftSig(n, m, ell))
    assert (stats.bits_sent["online"], stats.bits_sent["offline"], stats.rounds) == (
        c.online_bits,
        c.offline_bits,
        c.rounds,
    )
