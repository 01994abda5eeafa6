"""Compressor internals without processes: packing, the gloo traffic model, unbiasedness
(statistical), the level optimality conditions, CO3's rounding, DGC's selection, checkpoints."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privquant.errors import PrivQuantError
from privquant.train.gradcomp import METHODS, make
from privquant.train.gradcomp import bits as B
from privquant.train.gradcomp.bingrad import binary_levels
from privquant.train.gradcomp.co3 import LowFloat
from privquant.train.gradcomp.comm import allgather_traffic, allreduce_traffic
from privquant.train.gradcomp.dgc import DGC
from privquant.train.gradcomp.orq import ORQ, levels_from_sorted
from privquant.train.gradcomp.qsgd import QSGD
from privquant.train.gradcomp.terngrad import TernGrad

Z = 5.5  # z-score bound per element (Bonferroni over a few hundred elements: false alarm < 1e-5)


def seeded(comp, seed=1):
    comp.gen.manual_seed(seed)
    return comp


# ---------------------------------------------------------------------- packing
@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**31))
def test_pack_roundtrip(b, n, seed):
    codes = torch.randint(0, 1 << b, (n,), generator=torch.Generator().manual_seed(seed))
    packed = B.pack(codes, b)
    assert packed.dtype == torch.uint8 and packed.numel() == B.packed_len(n, b)
    assert torch.equal(B.unpack(packed, b, n), codes)


def test_pack_edges():
    assert torch.equal(B.pack(torch.tensor([3, 0, 1, 2, 3]), 2), torch.tensor([0b10010011, 3]))
    assert torch.equal(B.unpack(B.pack(torch.full((9,), 127), 7), 7, 9), torch.full((9,), 127))
    with pytest.raises(ValueError):
        B.unpack(torch.zeros(3, dtype=torch.uint8), 2, 13)  # 13 codes need 4 bytes
    with pytest.raises(ValueError):
        B.pack(torch.zeros(3), 9)
    assert B.code_bits(15) == 4 and B.code_bits(16) == 4 and B.code_bits(17) == 5


def test_segments():
    seg = B.Segments([2, 3])
    x = torch.tensor([1.0, -4.0, 2.0, 0.5, 3.0])
    assert seg.sum(x).tolist() == [-3.0, 5.5]
    assert seg.amax(x).tolist() == [1.0, 3.0] and seg.amin(x).tolist() == [-4.0, 0.5]
    assert seg.expand(torch.tensor([7.0, 9.0])).tolist() == [7, 7, 9, 9, 9]


# ---------------------------------------------------------------------- traffic model
@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 5000), elem=st.sampled_from([1, 2, 4]), world=st.integers(2, 6))
def test_allreduce_model_totals(n, elem, world):
    """Every in-range segment travels W-1 times in each ring phase: summed over the ranks the
    payload is exactly 2(W-1) * bytes; even split when 2W divides n."""
    per = [allreduce_traffic(n * elem, elem, world, r) for r in range(world)]
    assert sum(t.payload for t in per) == 2 * (world - 1) * n * elem
    if n % (2 * world) == 0:
        assert {t.payload for t in per} == {2 * (world - 1) * n * elem // world}
        assert {t.sends for t in per} == {4 * (world - 1)}
    assert allreduce_traffic(n * elem, elem, 1, 0).wire == 0


def test_allgather_model():
    t = allgather_traffic(1000, 4)
    assert (t.payload, t.sends, t.recvs, t.wire) == (3000, 6, 6, 3000 + 96 * 6 + 48 * 6)


# ---------------------------------------------------------------------- unbiasedness
def _zscores(mean, truth, var, trials):
    sd = (var / trials).sqrt()
    nz = sd > 0
    assert torch.allclose(mean[~nz], truth[~nz], rtol=1e-4, atol=1e-7), "deterministic ones"
    return ((mean - truth)[nz] / sd[nz]).abs()


def test_terngrad_unbiased_without_clipping():
    trials, sizes = 3000, [40, 60]
    g = torch.randn(sum(sizes)) * torch.linspace(0.1, 3, sum(sizes))
    comp = seeded(TernGrad(clip=0.0))
    seg = B.Segments(sizes * trials)
    gg = g.repeat(trials)
    _, scale = comp.ternarize(gg, seg)
    q = comp.codes(gg, scale, seg).float() * seg.expand(scale)
    q = q.view(trials, -1)
    one = B.Segments(sizes)
    s = one.expand(one.amax(g.abs()))  # per element its layer's scaler
    assert bool((_zscores(q.mean(0), g, s * g.abs() - g * g, trials) < Z).all())


def test_terngrad_clipping_bounds_and_codes():
    comp = seeded(TernGrad(clip=2.5))
    seg = B.Segments([1000])
    g = torch.randn(1000)
    g[0] = 100.0
    clipped, scale = comp.ternarize(g, seg)
    assert float(clipped.max()) <= 2.5 * float(g.std(unbiased=False)) + 1e-5
    codes = comp.codes(clipped, scale, seg)
    assert set(codes.unique().tolist()) <= {-1, 0, 1}


@pytest.mark.parametrize("norm", ["l2", "max"])
@pytest.mark.parametrize("levels", [1, 7])
def test_qsgd_unbiased(norm, levels):
    trials, d = 3000, 64
    comp = seeded(QSGD(levels=levels, bucket=d, norm=norm))
    v = torch.randn(2, d) * torch.tensor([[1.0], [0.01]])
    norms = comp.norms(v)
    q = comp.quantize(v.repeat(trials, 1), norms.repeat(trials)).float()
    q = q * (norms.repeat(trials) / levels)[:, None]
    mean = q.view(trials, 2, d).mean(0)
    r = v.abs() * levels / norms[:, None]
    frac = r - r.floor()
    var = (norms[:, None] / levels) ** 2 * frac * (1 - frac)
    assert bool((_zscores(mean.reshape(-1), v.reshape(-1), var.reshape(-1), trials) < Z).all())
    assert int(q.abs().amax()) <= float(norms.max()) + 1e-6


def test_qsgd_shared_norm_stays_unbiased():
    """The summable variant quantizes under max-over-ranks norms (>= the local one)."""
    trials, d = 3000, 32
    comp = seeded(QSGD(levels=3, bucket=d, norm="max", summable=True))
    v = torch.randn(1, d)
    shared = comp.norms(v) * 2.5
    q = comp.quantize(v.repeat(trials, 1), shared.repeat(trials)).float() * (shared / 3)
    r = v.abs() * 3 / shared
    var = (shared / 3) ** 2 * (r - r.floor()) * (1 - r + r.floor())
    assert bool((_zscores(q.mean(0), v[0], var[0], trials) < Z).all())


def test_orq_unbiased():
    trials, sizes = 2000, [50, 30]
    g = torch.cat([torch.randn(50), torch.distributions.Laplace(0.0, 0.1).sample((30,))])
    comp = seeded(ORQ(levels=4, sample=64))
    seg1 = B.Segments(sizes)
    lv = torch.tensor([[-3.0, -0.5, 0.4, 3.0], [-1.0, -0.05, 0.05, 1.0]])
    lv[:, 0], lv[:, -1] = seg1.amin(g), seg1.amax(g)
    segt = B.Segments(sizes * trials)
    codes = comp.quantize(g.repeat(trials), lv.repeat(trials, 1), segt)
    q = lv.repeat(trials, 1).reshape(-1)[segt.ids * 4 + codes].view(trials, -1)
    k = (g[:, None] >= seg1.expand(lv[:, 1])[:, None]).long().squeeze(1) + (
        g >= seg1.expand(lv[:, 2])
    ).long()
    flat = lv.reshape(-1)
    lo, hi = flat[seg1.ids * 4 + k], flat[seg1.ids * 4 + k + 1]
    var = (hi - g) * (g - lo)
    assert bool((_zscores(q.mean(0), g, var.clamp_min(0), trials) < Z).all())


# ---------------------------------------------------------------------- optimality conditions
def _orq_variance(y, b):
    k = torch.searchsorted(b, y, right=True).clamp(1, len(b) - 1) - 1
    return float(((b[k + 1] - y) * (y - b[k])).sum())


@pytest.mark.parametrize("s", [3, 7])
def test_orq_levels_locally_optimal(s):
    """After the sweeps no single level can move to any point between its neighbours and lower
    the rounding variance (the objective is convex piecewise linear in each level)."""
    x = torch.distributions.Laplace(0.0, 1.0).sample((3000,)).double()
    y = torch.sort(x).values
    b = levels_from_sorted(y[None], y[:1], y[-1:], s, 60)[0]
    v = _orq_variance(y, b)
    uniform = torch.linspace(float(y[0]), float(y[-1]), s + 1, dtype=torch.float64)
    assert v < 0.6 * _orq_variance(y, uniform)
    for i in range(1, s):
        for c in y[(y >= b[i - 1]) & (y <= b[i + 1])][::7]:
            bb = b.clone()
            bb[i] = c
            assert _orq_variance(y, bb) >= v * (1 - 1e-3)
    assert bool((b[1:] >= b[:-1]).all())


def test_bingrad_levels_satisfy_lloyd_conditions():
    x = torch.cat([torch.randn(700) - 1.0, torch.randn(300) * 0.2 + 2.0])
    seg = B.Segments([1000])
    b1, b2, t = binary_levels(x, seg, 60)
    lo, hi = x[x < t], x[x >= t]
    assert abs(float(t - (b1 + b2) / 2)) < 1e-6
    assert abs(float(b1 - lo.mean())) < 1e-5 and abs(float(b2 - hi.mean())) < 1e-5

    def mse(a1, a2, th):
        return float(torch.where(x >= th, (x - a2) ** 2, (x - a1) ** 2).sum())

    best = mse(b1, b2, t)
    for d in (-0.05, 0.05):
        assert mse(b1 + d, b2, t) > best and mse(b1, b2 + d, t) > best
        assert mse(b1, b2, t + d) >= best - 1e-6


# ---------------------------------------------------------------------- CO3 and DGC
@settings(max_examples=30, deadline=None)
@given(
    exp=st.integers(1, 4),
    man=st.integers(0, 3),
    scale=st.sampled_from([1e-8, 1e-3, 1.0, 300.0]),
    seed=st.integers(0, 1000),
)
def test_co3_rounds_to_nearest_representable(exp, man, scale, seed):
    fmt = LowFloat(exp, man)
    x = torch.randn(400, generator=torch.Generator().manual_seed(seed)) * scale
    x[0] = 0.0
    big_e, codes = fmt.encode(x)
    assert fmt.valid(codes)
    y = fmt.decode(big_e, codes)
    every = fmt.decode(big_e, torch.arange(1 << (1 + exp + man)).to(torch.uint8))
    best = (x[:, None] - every[None, :]).abs().min(1).values
    assert bool(((x - y).abs() <= best * (1 + 1e-6) + 1e-30).all())
    assert float(y[0]) == 0.0


def test_co3_rejects_foreign_codes():
    assert not LowFloat(3, 0).valid(torch.tensor([0b10000], dtype=torch.uint8))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), density=st.sampled_from([0.001, 0.01, 0.3, 1.0]))
def test_dgc_selects_exactly_the_top_k(n, density):
    comp = seeded(DGC(density=density))
    v = torch.randn(n)
    k = comp.keep(n, 10**6)
    idx = comp.select(v, k)
    assert idx.numel() == k == len(set(idx.tolist()))
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    if rest.any():
        assert float(v[idx].abs().min()) >= float(v[rest].abs().max())


def test_dgc_warmup_schedule():
    comp = DGC(density=0.001, warmup=8)
    got = [comp.density_at(i) for i in range(2, 12)]
    assert got == [0.25, 0.25, 0.0625, 0.0625, 0.015625, 0.015625, 0.004, 0.004, 0.001, 0.001]


# ---------------------------------------------------------------------- options and checkpoints
@pytest.mark.parametrize("method", sorted(METHODS))
def test_state_dict_roundtrip(method):
    comp = make(method, seed=3)
    comp.buckets[0] = {"sizes": torch.tensor([4, 2]), "e": torch.randn(6)}
    comp.iteration = 17
    comp.gen.manual_seed(99)
    clone = pickle.loads(pickle.dumps(comp))
    assert clone.iteration == 17 and clone.options() == comp.options()
    assert torch.equal(clone.buckets[0]["e"], comp.buckets[0]["e"])
    assert torch.equal(clone.gen.get_state(), comp.gen.get_state())
    other = make("fp16" if method != "fp16" else "qsgd")
    with pytest.raises(PrivQuantError):
        other.load_state_dict(comp.state_dict())


@pytest.mark.parametrize(
    "method,opts",
    [
        ("qsgd", {"levels": 0}),
        ("qsgd", {"norm": "l1"}),
        ("dgc", {"density": 0.0}),
        ("co3", {"exp": 4, "man": 4}),
        ("orq", {"levels": 1}),
        ("bingrad", {"private": True}),
        ("terngrad", {"private": True}),  # private needs summable
        ("nope", {}),
        ("qsgd", {"bogus": 1}),
    ],
)
def test_bad_options_raise(method, opts):
    with pytest.raises(PrivQuantError):
        make(method, **opts)


def test_ring_encoding_roundtrip():
    from privquant.train.gradcomp.base import ring_decode, ring_encode

    codes = torch.tensor([-127, -1, 0, 1, 127])
    for rb in (8, 32):
        assert torch.equal(ring_decode(ring_encode(codes, rb, None), rb), codes)
    mask = np.array([5, 250, 0, 1, 255], dtype=np.uint64)
    assert ring_encode(codes, 8, mask).tolist() == [
        (c + m) % 256 for c, m in zip([129, 255, 0, 1, 127], mask.tolist())
    ]


@pytest.mark.parametrize("world", [2, 4])
def test_declared_bytes_match_the_docstring_formulas(world):
    """Each method's closed form, for resnet8's single bucket (N = 77754 in L = 29 layers),
    written out as the module docstrings state it (payload bytes per rank per step)."""
    from privquant.models import build_model

    sizes = [p.numel() for p in build_model("resnet8").parameters()]
    n, nl, w = sum(sizes), len(sizes), world
    seg = B.Segments(sizes)

    class _C:
        pass

    def payload(method, info=None, **opts):
        comp = make(method, **opts)
        comp.comm = _C()
        comp.comm.world, comp.comm.rank = w, 0
        return comp.traffic(n, seg, info or {}).payload

    ag = w - 1  # an all_gather of c bytes sends (W-1) c
    ar = 2 * (w - 1) / w  # a ring all_reduce of B bytes: 2(W-1)/W B on average over the ranks
    # (rank 0's share differs by a segment-rounding remainder when 2W does not divide N)
    nc = -(-n // 512)
    assert payload("none") == pytest.approx(ar * 4 * n, abs=64)
    assert payload("fp16") == pytest.approx(ar * 2 * n, abs=64)
    assert payload("terngrad") == ag * (4 * nl + -(-n // 4))
    assert payload("terngrad", summable=True) == pytest.approx(ar * (4 * nl + n), abs=64)
    assert payload("qsgd") == ag * (4 * nc + -(-n * 4 // 8))
    assert payload("qsgd", summable=True) == pytest.approx(ar * (4 * nc + n), abs=64)
    assert payload("dgc", {"k": 78}) == ag * 8 * 78
    assert payload("bingrad") == ag * (8 * nl + -(-n // 8))
    assert payload("orq") == ag * (4 * nl * 4 + -(-n * 2 // 8))
    assert payload("co3", {"lengths": [900, 1000]}) == ag * (8 + 1000)
