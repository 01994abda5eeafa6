"""Prefix-circuit comparison [C < r] with a shared low block: exact results and exact cost."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_testlib import assert_cost, share

from privquant.protocols import compare
from privquant.protocols.harness import run_protocol, run_roles
from privquant.protocols.primitives import ring


def _run(groups, data0, data1, dealer, rvals):
    run = run_roles(
        lambda corr: compare.CIRCUIT.offline(corr, compare.circuit(groups), masks=rvals),
        lambda p, pre, data: compare.CIRCUIT.online(p, compare.circuit(groups), pre, data),
        (data0,),
        (data1,),
        dealer=dealer,
        master=3,
    )
    return run.out0, run.out1, run.stats


@st.composite
def group_cases(draw):
    ngroups = draw(st.integers(1, 2))
    out = []
    for _ in range(ngroups):
        low = draw(st.integers(0, 9))
        njobs = draw(st.integers(0 if low else 1, 3))
        widths = tuple(draw(st.integers(0 if low else 1, 9)) for _ in range(njobs))
        want_low = low > 0 and draw(st.booleans())
        n = draw(st.integers(1, 12))
        digit = draw(st.sampled_from((0, *compare.DIGITS)))
        out.append(compare.Group(n, low, widths, want_low, digit))
    return out


@settings(deadline=None, max_examples=200)
@given(
    groups=group_cases(),
    seed=st.integers(0, 2**31),
    dealer=st.sampled_from(["thread", "simulated"]),
)
def test_compare_exact_and_cost(groups, seed, dealer):
    g = torch.Generator().manual_seed(seed)
    data0, data1, expect, rvals = [], [], [], []
    for grp in groups:
        nb = max(grp.nbits, 1)
        r = ring.uniform(g, (grp.n,), nb) if nb > 1 else ring.random_bits(g, (grp.n,)).long()
        rvals.append(r)
        # public values: random, and some equal to r or r +- 1 on the compared bits (edge cases)
        cs = []
        for _ in range(len(grp.widths) + 1):
            c = ring.uniform(g, (grp.n,), 62)
            pick = torch.randint(0, 4, (grp.n,), generator=g)
            c = torch.where(
                pick == 0, r, torch.where(pick == 1, r + 1, torch.where(pick == 2, r - 1, c))
            )
            cs.append(c & ((1 << 62) - 1))
        c_low, c_jobs = cs[0], cs[1:]
        # jobs see the low bits of c_low and their own high bits
        lowmask = (1 << grp.low) - 1
        exp = []
        for w, cj in zip(grp.widths, c_jobs):
            m = (1 << (grp.low + w)) - 1
            full = ((cj & ~lowmask) | (c_low & lowmask)) & m
            exp.append((full < (r & m)).to(torch.uint8))
        if grp.want_low:
            exp.append(((c_low & lowmask) < (r & lowmask)).to(torch.uint8))
        rb0, rb1 = ring.xor_share(ring.bits(r, nb), g)
        data0.append((rb0, c_low, c_jobs))
        data1.append((rb1, c_low, c_jobs))
        expect.append(exp)
    out0, out1, stats = _run(groups, data0, data1, dealer, rvals)
    for e, a, b in zip(expect, out0, out1):
        assert len(e) == len(a)
        for ee, aa, bb in zip(e, a, b):
            assert torch.equal(aa ^ bb, ee)
    c = compare.CIRCUIT.cost(compare.circuit(groups))
    assert (stats.bits_sent["online"], stats.bits_sent["offline"], stats.rounds) == (
        c.online_bits,
        c.offline_bits,
        c.rounds,
    )


def test_tree_plan_counts():
    # 8 leaves, lt only at the root: 7 lt gates, eq needed for hi children: 3 + 1 + 0
    t = compare.TreePlan(8, False)
    assert t.depth == 3 and t.sizes == (8, 4, 2, 1)
    assert [len(e) for e in t.eq_parents] == [3, 1, 0]
    t = compare.TreePlan(7, True)
    assert t.depth == 3 and all(len(e) == t.sizes[i] // 2 for i, e in enumerate(t.eq_parents))
    # requant at L=20, k=12, two thresholds of 7 bits, bit leaves: 44 gates, 68 openings, 5 levels
    grp = compare.Group(1, 12, (7, 7), want_low=True, digit=1)
    assert grp.depth == 5 and grp.monomials == 0
    assert compare.counts([grp]) == (68, 44)
    # 4-bit digits: low 3 digits (33 monomials), high 4+3 bits shared by both jobs (11 + 4);
    # trees over 3 leaves (2 lt gates, 4 openings) and 2 leaves (lt and eq: 2 gates, 3 openings)
    # per job, joins (b + 2 eq: 2 gates, 3 openings): 13 openings, 8 gates, 3 levels
    grp = compare.Group(1, 12, (7, 7), want_low=True, digit=4)
    assert grp.depth == 3 and grp.monomials == 33 + 15
    assert compare.counts([grp]) == (13, 8)
    assert compare.Group(1, 12, (7, 7), want_low=True).d in compare.DIGITS
    assert compare.depth(1) == 0 and compare.depth(2) == 1 and compare.depth(5) == 3


@settings(deadline=None, max_examples=100)
@given(
    ell=st.one_of(st.integers(2, 16), st.integers(17, 40)),
    data=st.data(),
    dealer=st.sampled_from(["thread", "simulated"]),
)
def test_compare_protocol_thresholds(ell, data, dealer):
    H = 1 << (ell - 1)
    lo = data.draw(st.integers(-H, H - 1))
    hi = data.draw(st.integers(lo, H - 1))
    if data.draw(st.booleans()):
        lo, hi = -H, H - 1
    ts = tuple(data.draw(st.lists(st.integers(-H - 2, H + 2), min_size=1, max_size=3)))
    seed = data.draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 1 << 62, (24,), generator=g) % (hi - lo + 1)) + lo
    x[0], x[-1] = lo, hi
    for j, t in enumerate(ts[:2]):  # values exactly at and around thresholds
        if lo <= t - 1 and t <= hi:
            x[1 + 2 * j], x[2 + 2 * j] = t - 1, t
    sig = compare.CompareSig(24, ell, ts, lo, hi)
    x0, x1 = share(x, ell, seed)
    run = run_protocol(compare.COMPARE, sig, (x0,), (x1,), dealer=dealer, master=seed)
    for t, a, b in zip(ts, run.out0, run.out1):
        assert torch.equal(a ^ b, (x >= t).to(torch.uint8))
    assert_cost(run, compare.COMPARE.cost(sig))


def test_parities_of_both_halves_exact_incl_sign_bit():
    import random

    from privquant.protocols.compare import _parities

    rnd = random.Random(7)
    vals = [rnd.getrandbits(64) for _ in range(5000)] + [2**64 - 1, 2**63, 2**63 - 1, 0, 2**32]
    x = torch.tensor([v - (1 << 64) if v >> 63 else v for v in vals])
    lo, hi = _parities(x)
    assert lo.tolist() == [bin(v & 0xFFFFFFFF).count("1") % 2 for v in vals]
    assert hi.tolist() == [bin(v >> 32).count("1") % 2 for v in vals]


@settings(deadline=None, max_examples=60)
@given(
    d=st.sampled_from(compare.DIGITS),
    low=st.integers(0, 11),
    width=st.integers(1, 13),
    n=st.integers(1, 9),
    sliced=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_leaves_are_the_digit_comparisons(d, low, width, n, sliced, seed):
    """With the whole mask on P0's side (P1's shares all 0), P0's leaves ARE the plaintext digit
    comparisons ``[v < r_D]`` and ``[v == r_D]``: every digit size, short last digits, the lookup
    table (d <= 3) and the int64 words, and the digit slicing of large layers (``LEAF_SLICE``)."""
    g = torch.Generator().manual_seed(seed)
    grp = compare.Group(n, low, (width, max(1, width - 2)), True, d)
    r = ring.uniform(g, (n,), grp.nbits)
    c = ring.uniform(g, (n,), 62)
    rb = ring.bits(r, grp.nbits)
    mono = compare._monomials(grp, rb) if grp.monomials else None
    old = compare.LEAF_SLICE
    compare.LEAF_SLICE = 1 if sliced else old
    try:
        zero = None if mono is None else torch.zeros_like(mono)
        for role, rbits, m in ((0, rb, mono), (1, torch.zeros_like(rb), zero)):
            blocks = dict(
                zip([b[0] for b in grp.blocks], compare._block_monos(role, grp, rbits, m))
            )
            for start, w in ([(0, low)] if low else []) + [(low, width), (low, width - 2)]:
                if w <= 0:
                    continue
                lt, eq = compare._leaves(grp, blocks[start], c, start, w)
                for i, pos in enumerate(range(0, w, d)):
                    s = min(d, w - pos)
                    v = (c >> (start + pos)) & ((1 << s) - 1)
                    rd = (r >> (start + pos)) & ((1 << s) - 1)
                    want_lt = (v < rd).to(torch.uint8) if role == 0 else torch.zeros_like(lt[i])
                    want_eq = (v == rd).to(torch.uint8) if role == 0 else torch.zeros_like(eq[i])
                    assert torch.equal(lt[i], want_lt) and torch.equal(eq[i], want_eq)
    finally:
        compare.LEAF_SLICE = old


@pytest.mark.parametrize("d", compare.DIGITS)
@pytest.mark.parametrize("low, width", [(0, 55), (0, 56), (1, 60), (0, 61), (2, 58)])
def test_leaves_of_wide_fields(d, low, width):
    """Fields up to 61 bits (62-bit rings): the lookup leaves must not lose the top digits."""
    for sliced in (False, True):
        test_leaves_are_the_digit_comparisons.hypothesis.inner_test(d, low, width, 5, sliced, 11)


def test_parities_of_narrow_words():
    import random

    from privquant.protocols.compare import _parities

    rnd = random.Random(8)
    for width in (1, 2, 4, 8, 16):
        vals = [rnd.getrandbits(width) | rnd.getrandbits(width) << 32 for _ in range(2000)]
        lo, hi = _parities(torch.tensor(vals), width)
        assert lo.tolist() == [bin(v & 0xFFFFFFFF).count("1") % 2 for v in vals]
        assert hi.tolist() == [bin(v >> 32).count("1") % 2 for v in vals]
