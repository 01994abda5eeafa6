"""Lift of a small non-negative value from Z_2^m to Z_2^L: exact, and measured == cost()."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privquant.protocols import lift, ring
from privquant.protocols.channel import combine
from privquant.protocols.dealer import Seeds, make_correlations, simulated_dealer_book
from privquant.protocols.transport_thread import simulate


def _run(q0, q1, m, ell, dealer):
    sim = dealer == "simulated"
    book = simulated_dealer_book() if sim else None
    n = q0.numel()

    def body(p, q):
        seeds = Seeds.derived(5) if sim else Seeds.derived(5, p.rank)
        corr = make_correlations(p, seeds, simulated=sim, dealer_book=book)
        pre = lift.offline(corr, n, ell)
        if p.rank == 2:
            return None
        return lift.online(p, pre, q, m, ell)

    res = simulate(
        lambda p: body(p, q0),
        lambda p: body(p, q1),
        None if sim else (lambda p: body(p, None)),
        insecure_simulated=sim,
    )
    stats = [
        res.parties[0].stats,
        res.parties[1].stats,
        book.total if sim else res.parties[2].stats,
    ]
    return res.results[0], res.results[1], combine(stats)


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
    c = lift.cost(n, m, ell)
    assert (stats.bits_sent["online"], stats.bits_sent["offline"], stats.rounds) == (
        c.online_bits,
        c.offline_bits,
        c.rounds,
    )
