"""Seeds and correlated randomness: one code path in three roles, corrections counted."""

import pytest
import torch

from privquant.protocols.preprocessing.dealer import (
    SEED_SETUP_COST,
    Seeds,
    establish_seeds,
    make_provider,
)
from privquant.protocols.preprocessing.simulated import simulated_dealer_book
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import combine
from privquant.protocols.transport.thread import simulate


def test_establish_seeds_counts_and_pairs():
    res = simulate(establish_seeds, establish_seeds, establish_seeds)
    s0, s1, sd = res.results
    assert s0.seeds["d0"] == sd.seeds["d0"] and s1.seeds["d1"] == sd.seeds["d1"]
    assert s0.seeds["01"] == s1.seeds["01"]
    assert "01" not in sd.seeds and "d1" not in s0.seeds and "d0" not in s1.seeds
    total = combine(res.stats)
    assert total.bits_sent["setup"] == SEED_SETUP_COST.setup_bits == 384
    assert total.bits_sent["online"] == total.bits_sent["offline"] == 0
    assert total.phase_rounds("setup") == 1  # all three messages go out at once


def _correlations(corr):
    """A protocol-like offline function using every kind of correlation."""
    r = corr.random((6,), 13)
    rb = corr.share_bits(lambda: ring.bits(r.value, 13), (13, 6))
    p = corr.share_ring(lambda: r.value * 3 + 1, (6,), 17)
    tri = corr.and_triples(40)
    common = corr.common((3,), 9)
    keyed = corr.keyed_ring("d0", "w", (2,), 7)
    return {
        "r": r.share,
        "r_value": r.value,
        "rb": rb,
        "p": p,
        "tri": tri,
        "common": common,
        "keyed": keyed,
    }


def _run(mode):
    if mode == "thread":

        def role(p):
            return _correlations(make_provider(p, Seeds.derived(5, p.rank)))

        res = simulate(role, role, role)
        return res.results, [p.stats for p in res.parties]
    book = simulated_dealer_book()

    def srole(p):
        return _correlations(make_provider(p, Seeds.derived(5), simulated=True, dealer_book=book))

    res = simulate(srole, srole, insecure_simulated=True)
    return [*res.results[:2], None], [res.parties[0].stats, res.parties[1].stats, book.total]


@pytest.mark.parametrize("mode", ["thread", "simulated"])
def test_correlations_are_correct_and_counted(mode):
    (o0, o1, od), stats = _run(mode)
    r = ring.reduce(o0["r"] + o1["r"], 13)
    if od is not None:
        assert torch.equal(r, od["r_value"])
        assert od["r"] is None and od["common"] is None
        assert torch.equal(od["keyed"], o0["keyed"])
    assert torch.equal(o0["rb"] ^ o1["rb"], ring.bits(r, 13))
    assert torch.equal(ring.reduce(o0["p"] + o1["p"], 17), ring.reduce(r * 3 + 1, 17))
    t0, t1 = o0["tri"], o1["tri"]
    assert torch.equal(t0.c ^ t1.c, (t0.a ^ t1.a) & (t0.b ^ t1.b))
    assert torch.equal(o0["common"], o1["common"])
    assert o1["keyed"] is None or mode == "simulated"
    total = combine(stats)
    # corrections only: 13*6 bits of r, 6*17 of p, 40 triple bits; P0 receives nothing
    assert total.bits_sent["offline"] == 13 * 6 + 6 * 17 + 40
    assert stats[0].bits_recv["offline"] == 0
    assert stats[1].bits_recv["offline"] == total.bits_sent["offline"]
    assert total.msgs_sent["offline"] == 3
    assert total.bits_sent["online"] == 0
    assert total.insecure_simulated == (mode == "simulated")


def test_simulated_dealer_gives_the_same_shares_as_the_real_one():
    (a0, a1, _), _ = _run("thread")
    (b0, b1, _), _ = _run("simulated")
    for key in ("r", "rb", "p", "common"):
        assert torch.equal(a0[key], b0[key]) and torch.equal(a1[key], b1[key])
    assert torch.equal(a1["tri"].c, b1["tri"].c)
