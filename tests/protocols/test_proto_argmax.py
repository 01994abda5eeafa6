"""Secure argmax / top-k: the network selects, the protocol is exact, measured == declared."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_testlib import assert_cost, share
from runtime_helpers import argmax_logits

from privquant.errors import PrivQuantError
from privquant.ops.argmax import plain_topk
from privquant.protocols.argmax import ARGMAX, ArgmaxSig, _parts, flat_plan, network
from privquant.protocols.harness import run_protocol
from privquant.protocols.preprocessing.base import need_cost
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.primitives.ring import signed_bits


@pytest.mark.parametrize("classes", range(1, 11))
def test_network_selects_top_k_of_every_01_input(classes):
    # 0-1 principle: a comparator network selects the k largest of any input iff it does so
    # for every 0/1 input; distinct keys (value, -index) make the expected order unique
    for k in range(1, classes + 1):
        net = network(classes, k)
        for bits in itertools.product((0, 1), repeat=classes):
            keys = [b * classes + (classes - 1 - i) for i, b in enumerate(bits)]
            assert net.run(keys) == sorted(keys, reverse=True)[:k], (classes, k, bits)


@pytest.mark.parametrize("classes,k", [(10, 1), (10, 3), (16, 5), (37, 4), (100, 1), (100, 10)])
def test_network_random_permutations(classes, k):
    net = network(classes, k)
    g = torch.Generator().manual_seed(classes * 100 + k)
    for _ in range(50):
        perm = torch.randperm(classes, generator=g).tolist()
        assert net.run(perm) == sorted(perm, reverse=True)[:k]


@pytest.mark.parametrize("classes", [2, 3, 7, 10, 33, 100])
def test_argmax_network_is_the_tournament(classes):
    net = network(classes, 1)
    assert net.comparators == classes - 1
    assert len(net.layers) == math.ceil(math.log2(classes))
    assert net.final == (False,) * (len(net.layers) - 1) + (True,)


@st.composite
def cases(draw):
    classes = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 16, 17, 18, 23, 33, 34]))
    k = draw(st.integers(1, classes))
    scale = draw(st.sampled_from([1, 1, 1, 1000, 1 << 20, 1 << 40]))
    lo = draw(st.integers(-40, 20)) * scale
    hi = lo + draw(st.integers(0, 60)) * scale + draw(st.integers(0, 3))
    ell_in = signed_bits(lo - hi, hi - lo) + draw(st.integers(0, 3))
    ell_out = signed_bits(0, classes - 1) + draw(st.sampled_from([0, 0, 1, 4]))
    n = draw(st.integers(1, 4))
    ties = draw(st.booleans())
    plans = [None, "network"]
    plans += ["flat"] if k == 1 and 3 <= classes <= 17 else []
    plans += ["rank"] if 3 <= classes <= 33 else []
    force = draw(st.sampled_from(plans))
    return classes, k, lo, hi, min(ell_in, 62), ell_out, n, ties, force


@settings(deadline=None, max_examples=100)
@given(case=cases(), seed=st.integers(0, 2**31), dealer=st.sampled_from(["simulated", "thread"]))
def test_topk_exact_and_cost(case, seed, dealer):
    classes, k, lo, hi, ell_in, ell_out, n, ties, force = case
    sig = ArgmaxSig(n, classes, k, lo, hi, ell_in, ell_out, force)
    if sig.ell_diff + ell_out > 62:
        with pytest.raises(PrivQuantError):
            _ = sig.ell
        return
    x = argmax_logits(lo, hi, n, classes, ties, seed)
    x0, x1 = share(x, ell_in, seed)
    run = run_protocol(ARGMAX, sig, (x0,), (x1,), dealer=dealer, master=seed)
    y = ring.reconstruct(run.out0, run.out1, ell_out)
    assert torch.equal(y, plain_topk(x, k))
    assert_cost(run, ARGMAX.cost(sig))


def test_all_equal_and_extreme_rings():
    # every logit equal (ties everywhere) at the widest ring the packing allows
    lo, hi = -(1 << 55), (1 << 55) - 1
    sig = ArgmaxSig(3, 10, 4, lo, hi, 62, 5)
    assert sig.ell == 62
    for x in (torch.full((3, 10), hi), torch.full((3, 10), lo), torch.tensor([[lo, hi] * 5] * 3)):
        x0, x1 = share(x, 62, 7)
        run = run_protocol(ARGMAX, sig, (x0,), (x1,), dealer="thread")
        assert torch.equal(ring.reconstruct(run.out0, run.out1, 5), plain_topk(x, 4))
        assert_cost(run, ARGMAX.cost(sig))


def _cmp(m, L):
    from privquant.protocols import compare

    grp = compare.Group(m, 0, (L - 1,))
    u, gates = compare.counts([grp])
    return 2 * m * L + 2 * u, m * L + gates + m * grp.monomials, 1 + grp.depth


def test_cost_formulas_of_the_plans():
    n, C, lo, hi = 5, 10, -100, 100
    sig = ArgmaxSig(n, C, 1, lo, hi, 9, 5)
    L = signed_bits(lo - hi, hi - lo) + 5
    assert sig.ell == L == 14
    # network (the tournament): 9 comparators in 4 layers of open + comparison + selection
    online = offline = rounds = 0
    for m, ls in zip((5, 2, 1, 1), (L, L, L, 5)):
        on, off, r = _cmp(n * m, L)
        online, offline, rounds = (
            online + on + 2 * n * m,
            offline + off + 2 * n * m * ls,
            rounds + r + 1,
        )
    assert _parts(sig, "network")[0].then(need_cost(_parts(sig, "network")[1])) == Cost(
        online, offline, 0, rounds
    )
    # flat: 45 pairs at once, 3 ANDs of 3 win bits in Z_4, then one index polynomial
    f = flat_plan(C)
    assert (f.groups, f.size, len(f.pairs)) == (3, 3, 45)
    on, off, r = _cmp(n * 45, L)
    on += 2 * n * 9 * 3 * 3 + 2 * n * 9 * 3
    off += n * 9 * 3 * 7 * 2 + n * 9 * 7 * 5
    assert sig.plan == "flat" and ARGMAX.cost(sig) == Cost(on, off, 0, r + 2)
    assert ARGMAX.cost(sig).rounds < rounds
    # rank (top-3): 45 pairs, their bits to Z_16, 10 masked 4-bit ranks, 3 index polynomials
    sig3 = ArgmaxSig(n, C, 3, lo, hi, 9, 5)
    on, off, r = _cmp(n * 45, L)
    on += 2 * n * 45 + 2 * n * 10 * 4 + 2 * n * 3 * 9
    off += n * 45 * 4 + n * 10 * 4 + n * 10 * 11 + n * 3 * 9 * 5
    assert sig3.plan == "rank" and ARGMAX.cost(sig3) == Cost(on, off, 0, r + 3)
    net3 = _parts(sig3, "network")[0]
    assert ARGMAX.cost(sig3).rounds < net3.rounds
    assert ArgmaxSig(n, 18, 1, lo, hi, 9, 6).plan == "rank"  # beyond flat's 17 classes
    assert ArgmaxSig(n, 34, 2, lo, hi, 9, 7).plan == "network"  # beyond rank's 33
    assert ArgmaxSig(n, 2, 1, lo, hi, 9, 2).plan == "network"
    with pytest.raises(PrivQuantError, match="plan 'flat'"):
        _ = ArgmaxSig(n, 10, 2, lo, hi, 9, 5, "flat").plan


def test_signature_checks():
    with pytest.raises(PrivQuantError, match="differences"):
        _ = ArgmaxSig(1, 10, 1, 0, 15, 4, 5).ell
    with pytest.raises(PrivQuantError, match="indices"):
        _ = ArgmaxSig(1, 10, 1, 0, 15, 6, 4).ell
    with pytest.raises(PrivQuantError, match="top-k"):
        network(4, 5)
    with pytest.raises(PrivQuantError, match="ring width"):
        _ = ArgmaxSig(1, 10, 1, -(1 << 58), 1 << 58, 62, 5).ell
