"""Coefficient packing of the HE linear layer, checked without HE: the negacyclic products of
the packed polynomials, read at the used coefficients, equal ``ring_lin`` exactly."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privquant.errors import PrivQuantError
from privquant.protocols.linear import LinearSig, ring_lin
from privquant.protocols.preprocessing.he.layout import Geometry, Layout, best_layout


def negacyclic(a: np.ndarray, b: np.ndarray, t: int) -> np.ndarray:
    """``a * b mod (X^n + 1, t)`` for small coefficients (exact in int64 for these sizes)."""
    n = a.size
    full = np.convolve(a % t, b % t)  # < n * t^2 <= 2^62 for t <= 2^24, n <= 2^14
    out = full[:n].copy()
    out[: full.size - n] -= full[n:]
    return out % t


def packed_lin(lay: Layout, w: np.ndarray, x: np.ndarray, t: int) -> np.ndarray:
    """The layer computed through the packing: products, sums over channel blocks, decoding."""
    geo = lay.geo
    polys = lay.input_polys(geo.effective_input(x))
    w_e = geo.effective_weight(w)
    y_e = np.zeros((geo.batch, geo.m, geo.oh, geo.ow), dtype=np.int64)
    for ob in range(lay.nob):
        k = lay.weight_polys(w_e, ob)
        for b in range(geo.batch):
            for tile in range(lay.tiles):
                acc = np.zeros(lay.n, dtype=np.int64)
                for cb in np.flatnonzero(lay.pairs[:, ob]):
                    acc = (acc + negacyclic(polys[b, tile, cb], k[cb], t)) % t
                pos, (o, r, c) = lay.used(tile, ob)
                y_e[b, o, r, c] = acc[pos]
    return geo.output(y_e)


@st.composite
def layer(draw):
    if draw(st.booleans()) and draw(st.booleans()):
        b, k, o = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 6))
        return LinearSig("linear", (b, k), (o, k), 8)
    groups = draw(st.sampled_from([1, 1, 2, "dw"]))
    cin = draw(st.integers(1, 3)) * (2 if groups == 2 else 1)
    if groups == "dw":
        groups = cin
        cout = cin * draw(st.integers(1, 2))
    else:
        cout = draw(st.integers(1, 3)) * groups
    kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 2, 3, 5]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(max(1, kh - 2 * pad[0]), 9))
    w = draw(st.integers(max(1, kw - 2 * pad[1]), 9))
    n = draw(st.integers(1, 2))
    return LinearSig(
        "conv2d", (n, cin, h, w), (cout, cin // groups, kh, kw), 8, stride, pad, groups
    )


@st.composite
def layout_for(draw, sig):
    geo = Geometry.of(sig)
    n = draw(st.sampled_from([64, 128, 256]))
    th = draw(st.integers(1, geo.oh))
    tw = draw(st.integers(1, geo.ow))
    win = (th + geo.khe - 1) * (tw + geo.kwe - 1)
    if win > n:
        th, tw = 1, 1
        win = geo.khe * geo.kwe
    if win > n:
        n = 1 << (win - 1).bit_length()
    cw = draw(st.integers(1, max(1, min(geo.ce, n // win))))
    mw = draw(st.integers(1, max(1, min(geo.m, n // (win * cw)))))
    return Layout(geo, n, th, tw, cw, mw)


@settings(deadline=None, max_examples=250)
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_packing_matches_ring_lin(data, seed):
    sig = data.draw(layer())
    lay = data.draw(layout_for(sig))
    ell = 8
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, sig.w_shape, generator=g)
    x = torch.randint(0, 256, sig.x_shape, generator=g)
    got = packed_lin(lay, w.numpy(), x.numpy(), 1 << ell)
    assert np.array_equal(got, ring_lin(sig, w, x).numpy())
    # every output is decoded from exactly one coefficient of one response
    total = sum(lay.used(t, ob)[0].size for t in range(lay.tiles) for ob in range(lay.nob))
    assert total * lay.geo.batch == lay.geo.n_out
    assert lay.c0_offset(lay.geo.batch - 1, lay.tiles - 1, lay.nob - 1) < lay.geo.n_out


def test_layout_must_fit_the_ring():
    geo = Geometry.of(LinearSig("conv2d", (1, 4, 8, 8), (4, 4, 3, 3), 8, (1, 1), (1, 1)))
    with pytest.raises(ValueError):
        Layout(geo, 64, 8, 8, 1, 1)  # a 10x10 window does not fit 64 coefficients


@pytest.mark.parametrize(
    "sig",
    [
        LinearSig("conv2d", (1, 16, 6, 6), (8, 16, 3, 3), 8, (1, 1), (1, 1)),
        LinearSig("conv2d", (2, 6, 7, 5), (6, 3, 3, 2), 8, (2, 1), (1, 0), groups=2),
        LinearSig("conv2d", (1, 8, 6, 6), (8, 1, 3, 3), 8, (1, 1), (1, 1), groups=8),
        LinearSig("linear", (3, 40), (12, 40), 8),
    ],
)
def test_best_layout_minimises_the_declared_cost(sig):
    geo = Geometry.of(sig)
    n, r = 256, 300

    def q(mw):  # nondecreasing in M_w, infeasible above a bound (as the noise makes it)
        return None if mw > 5 else 1000 + 37 * mw

    lay, c = best_layout(geo, n, q, r)
    assert c == lay.n_in * q(lay.mw) + lay.n_resp * r
    best = None  # brute force over every layout that fits
    for th in range(1, geo.oh + 1):
        for tw in range(1, geo.ow + 1):
            win = (th + geo.khe - 1) * (tw + geo.kwe - 1)
            for cw in range(1, geo.ce + 1):
                for mw in range(1, geo.m + 1):
                    if mw * cw * win <= n and q(mw) is not None:
                        L = Layout(geo, n, th, tw, cw, mw)
                        v = L.n_in * q(mw) + L.n_resp * r
                        best = v if best is None else min(best, v)
    assert c == best


@pytest.mark.parametrize(
    "sig",
    [
        LinearSig("conv2d", (1, 4, 5, 5), (6, 3, 3, 3), 8, groups=2),  # C/groups mismatch
        LinearSig("conv2d", (1, 4, 5, 5), (5, 2, 3, 3), 8, groups=2),  # M not divisible
        LinearSig("conv2d", (1, 4, 2, 2), (4, 4, 3, 3), 8),  # empty output
        LinearSig("linear", (1, 4), (3, 5), 8),
        LinearSig("matmul", (1, 4), (3, 4), 8),
    ],
)
def test_bad_geometry_is_refused(sig):
    with pytest.raises(PrivQuantError):
        Geometry.of(sig)
