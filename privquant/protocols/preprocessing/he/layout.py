"""Coefficient packing of a conv2d / linear layer into polynomials (Cheetah's HomConv / HomFC).

Source: Huang et al., "Cheetah: Lean and Fast Secure Two-Party Deep Neural Network Inference",
USENIX Security 2022, Sec. 4 (HomConv, HomFC), generalised here to one encoding for both.

Reduction to one stride-1 unpadded convolution (all public geometry):

* ``linear`` ``x (B, K) @ W (O, K)^T`` is a 1x1 convolution of the image ``x^T`` of ``K``
  channels, ``B`` rows and 1 column (the batch becomes the spatial axis).
* Stride ``(sh, sw)`` by polyphase decomposition: the zero-padded input ``Xp`` splits into the
  phases ``X_ab[c, i, j] = Xp[c, sh*i + a, sw*j + b]`` and the kernel into
  ``W_ab[o, c, l, m] = w[o, c, sh*l + a, sw*m + b]`` (zero outside the kernel); then
  ``y = sum_ab conv_stride1(X_ab, W_ab)``. Only the ``P = min(sh, kh) * min(sw, kw)`` phases that
  meet the kernel are kept, as ``C_e = C * P`` channels (group-contiguous), kernel
  ``kh' x kw' = ceil(kh/sh) x ceil(kw/sw)``, input ``H' x W' = (OH + kh' - 1) x (OW + kw' - 1)``.
* Groups: the layer is the block-diagonal dense layer (an output meets only its group's
  channels); a product whose kernel block is structurally zero is skipped (compute only).

Packing (``n`` the ring degree, ``X^n = -1``): the output is cut into tiles of ``TH x TW``
outputs, whose inputs are ``H_w x W_w = (TH + kh' - 1) x (TW + kw' - 1)`` windows; channels into
blocks of ``C_w`` and outputs into blocks of ``M_w``, with ``M_w * C_w * H_w * W_w <= n``. With
``S = C_w H_w W_w`` and ``Off = (C_w - 1) H_w W_w + (kh' - 1) W_w + kw' - 1``:

    input  poly  T[c*H_w*W_w + i*W_w + j]               = X_e[c, i, j]   (one window)
    weight poly  K[o*S + Off - (c*H_w*W_w + l*W_w + m)]  = W_e[o, c, l, m]
    output       (T K)[o*S + Off + i*W_w + j]  = sum_{c,l,m} X_e[c, i+l, j+m] W_e[o, c, l, m]

for ``i < TH, j < TW``. Proof that nothing else lands there: a term of ``T K`` from input
``(c', i', j')`` and weight ``(o', c, l, m)`` sits at ``o'S + Off + (c'-c)H_wW_w + (i'-l)W_w +
(j'-m)``. Since ``j' - m`` is in ``[-(kw'-1), W_w-1]`` and the target ``j`` in ``[0, W_w-kw']``,
equality mod ``W_w`` forces ``j' - m = j``; likewise ``i' - l = i`` and ``c' = c``, and
``o' = o`` because every term of ``T * K_o'`` lies in ``[o'S, o'S + S + Off)``, which ends before
the targets of ``o' + 1`` start (at ``(o'+1)S + Off``). Nothing wraps onto a target: the largest
exponent is ``M_w S + Off - 1 <= n + Off - 1``, so a wrapped term lands below ``Off``, under
every target. Sums over the channel blocks add the partial sums; everything is exact mod ``t``.

Counts (``B`` batch, ``nt = ceil(OH/TH) * ceil(OW/TW)`` tiles, ``ncb = ceil(C_e/C_w)``,
``nob = ceil(M/M_w)``): ``n_in = B nt ncb`` query ciphertexts, ``n_out = B nt nob`` responses,
and ``|y|`` used output coefficients in total (each output once). :func:`best_layout` picks the
tile and block sizes that minimise the declared traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np

from privquant.errors import PrivQuantError
from privquant.protocols.primitives.geometry import conv_out_hw


@dataclass(frozen=True)
class Geometry:
    """The layer as one stride-1 unpadded convolution (see the module docstring)."""

    batch: int  # B (1 for linear: the batch is the spatial axis)
    c: int  # input channels C
    m: int  # outputs M
    groups: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    h: int  # input rows (before padding)
    w: int
    oh: int  # output rows
    ow: int
    linear: bool = False

    @staticmethod
    def of(sig) -> Geometry:
        """From a ``LinearSig``-like object; raises PrivQuantError on an impossible geometry."""
        what = f"HE linear layer {getattr(sig, 'key', '')!r}"
        if sig.kind == "linear":
            if len(sig.x_shape) != 2 or len(sig.w_shape) != 2 or sig.x_shape[1] != sig.w_shape[1]:
                raise PrivQuantError(f"{what}: shapes {sig.x_shape} x {sig.w_shape}")
            b, k = sig.x_shape
            o = sig.w_shape[0]
            geo = Geometry(1, k, o, 1, 1, 1, 1, 1, 0, 0, b, 1, b, 1, linear=True)
        elif sig.kind == "conv2d":
            if len(sig.x_shape) != 4 or len(sig.w_shape) != 4:
                raise PrivQuantError(f"{what}: shapes {sig.x_shape} x {sig.w_shape}")
            b, c, h, w = sig.x_shape
            m, cg, kh, kw = sig.w_shape
            (sh, sw), (ph, pw), g = sig.stride, sig.padding, sig.groups
            if g < 1 or c % g or m % g or cg != c // g or min(sh, sw) < 1 or min(ph, pw) < 0:
                raise PrivQuantError(f"{what}: inconsistent groups, stride or padding")
            oh, ow = conv_out_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
            geo = Geometry(b, c, m, g, kh, kw, sh, sw, ph, pw, h, w, oh, ow)
        else:
            raise PrivQuantError(f"{what}: kind {sig.kind!r} is not conv2d or linear")
        if min(geo.batch, geo.c, geo.m, geo.kh, geo.kw, geo.oh, geo.ow) < 1:
            raise PrivQuantError(f"{what}: empty input, weight or output")
        return geo

    @property
    def ph_live(self) -> int:
        return min(self.sh, self.kh)

    @property
    def pw_live(self) -> int:
        return min(self.sw, self.kw)

    @property
    def phases(self) -> int:
        return self.ph_live * self.pw_live

    @property
    def khe(self) -> int:
        return -(-self.kh // self.sh)

    @property
    def kwe(self) -> int:
        return -(-self.kw // self.sw)

    @property
    def ce(self) -> int:
        """Effective input channels ``C * P``."""
        return self.c * self.phases

    @property
    def cge(self) -> int:
        """Effective channels per group."""
        return self.ce // self.groups

    @property
    def he(self) -> int:
        return self.oh + self.khe - 1

    @property
    def we(self) -> int:
        return self.ow + self.kwe - 1

    @property
    def fan_in(self) -> int:
        """``K``: weights per output (= nonzero weights per output in the effective kernel)."""
        return (self.c // self.groups) * self.kh * self.kw

    @property
    def n_out(self) -> int:
        return self.batch * self.m * self.oh * self.ow

    # -------------------------------------------------------------- tensors (numpy, int64)
    def effective_input(self, x: np.ndarray) -> np.ndarray:
        """``X_e`` (B, C_e, H', W') from the layer input (conv (B, C, H, W) or linear (B, K))."""
        if self.linear:
            return np.ascontiguousarray(x.T.reshape(1, self.c, self.h, 1))
        b, c = self.batch, self.c
        xp = np.zeros(
            (
                b,
                c,
                self.h + 2 * self.ph + self.sh * self.khe,
                self.w + 2 * self.pw + self.sw * self.kwe,
            ),
            dtype=np.int64,
        )
        xp[:, :, self.ph : self.ph + self.h, self.pw : self.pw + self.w] = x
        out = np.empty((b, c, self.ph_live, self.pw_live, self.he, self.we), dtype=np.int64)
        for a in range(self.ph_live):
            for bb in range(self.pw_live):
                out[:, :, a, bb] = xp[
                    :, :, a : a + self.sh * self.he : self.sh, bb : bb + self.sw * self.we : self.sw
                ]
        return out.reshape(b, self.ce, self.he, self.we)

    def effective_weight(self, w: np.ndarray) -> np.ndarray:
        """``W_e`` of shape (M, C_e/groups, kh', kw') from the layer weight."""
        if self.linear:
            return np.ascontiguousarray(w.reshape(self.m, self.c, 1, 1))
        m, cg = self.m, self.c // self.groups
        wp = np.zeros((m, cg, self.sh * self.khe, self.sw * self.kwe), dtype=np.int64)
        wp[:, :, : self.kh, : self.kw] = w
        out = np.empty((m, cg, self.ph_live, self.pw_live, self.khe, self.kwe), dtype=np.int64)
        for a in range(self.ph_live):
            for bb in range(self.pw_live):
                out[:, :, a, bb] = wp[:, :, a :: self.sh, bb :: self.sw]
        return out.reshape(m, self.cge, self.khe, self.kwe)

    def output(self, y_e: np.ndarray) -> np.ndarray:
        """Layer output from the effective output (B, M, OH, OW)."""
        if self.linear:
            return np.ascontiguousarray(y_e[0, :, :, 0].T)
        return y_e


@dataclass(frozen=True)
class Layout:
    """Tile and block sizes for one geometry and ring degree ``n``."""

    geo: Geometry
    n: int
    th: int  # output rows per tile
    tw: int
    cw: int  # channels per query ciphertext
    mw: int  # outputs per response

    @property
    def hw(self) -> int:
        return self.th + self.geo.khe - 1

    @property
    def ww(self) -> int:
        return self.tw + self.geo.kwe - 1

    @property
    def nth(self) -> int:
        return -(-self.geo.oh // self.th)

    @property
    def ntw(self) -> int:
        return -(-self.geo.ow // self.tw)

    @property
    def tiles(self) -> int:
        return self.nth * self.ntw

    @property
    def ncb(self) -> int:
        return -(-self.geo.ce // self.cw)

    @property
    def nob(self) -> int:
        return -(-self.geo.m // self.mw)

    @property
    def n_in(self) -> int:
        return self.geo.batch * self.tiles * self.ncb

    @property
    def n_resp(self) -> int:
        return self.geo.batch * self.tiles * self.nob

    @property
    def slab(self) -> int:
        """``S = C_w H_w W_w``: coefficients of one output's slab."""
        return self.cw * self.hw * self.ww

    @property
    def offset(self) -> int:
        g = self.geo
        return (self.cw - 1) * self.hw * self.ww + (g.khe - 1) * self.ww + g.kwe - 1

    def l1_bound(self, w_bits: int) -> int:
        """``l1``: bound on the sum of ``||K||_1`` over the products summed into one response."""
        return self.mw * self.geo.fan_in * (1 << (w_bits - 1))

    def __post_init__(self):
        if self.mw * self.cw * self.hw * self.ww > self.n:
            raise ValueError("layout does not fit the ring")

    # -------------------------------------------------------------- block structure
    @cached_property
    def pairs(self) -> np.ndarray:
        """bool (ncb, nob): channel block ``cb`` meets output block ``ob`` (same group)."""
        g = self.geo
        cgroup = np.minimum(np.arange(self.ncb * self.cw) // g.cge, g.groups)  # padding -> none
        ogroup = np.full(self.nob * self.mw, -1)
        ogroup[: g.m] = np.arange(g.m) // (g.m // g.groups)
        cg = cgroup.reshape(self.ncb, self.cw)
        og = ogroup.reshape(self.nob, self.mw)
        out = np.zeros((self.ncb, self.nob), dtype=bool)
        for grp in range(g.groups):
            out |= np.any(cg == grp, axis=1)[:, None] & np.any(og == grp, axis=1)[None, :]
        return out

    # -------------------------------------------------------------- encoders
    def input_polys(self, x_e: np.ndarray) -> np.ndarray:
        """(B, tiles, ncb, n) coefficient arrays of the query (values as given)."""
        g = self.geo
        hh = self.nth * self.th + g.khe - 1
        ww = self.ntw * self.tw + g.kwe - 1
        xp = np.zeros((g.batch, self.ncb * self.cw, hh, ww), dtype=np.int64)
        xp[:, : g.ce, : g.he, : g.we] = x_e
        out = np.zeros((g.batch, self.nth, self.ntw, self.ncb, self.n), dtype=np.int64)
        used = self.cw * self.hw * self.ww
        for a in range(self.nth):
            for b in range(self.ntw):
                win = xp[
                    :, :, a * self.th : a * self.th + self.hw, b * self.tw : b * self.tw + self.ww
                ]
                out[:, a, b, :, :used] = win.reshape(g.batch, self.ncb, used)
        return out.reshape(g.batch, self.tiles, self.ncb, self.n)

    def weight_polys(self, w_e: np.ndarray, ob: int) -> np.ndarray:
        """(ncb, n) weight polynomials of output block ``ob`` (signed values as given)."""
        g = self.geo
        hw, ww, cw = self.hw, self.ww, self.cw
        dense = np.zeros((self.mw, self.ncb * cw, g.khe, g.kwe), dtype=np.int64)
        o0 = ob * self.mw
        for ol in range(min(self.mw, g.m - o0)):
            o = o0 + ol
            grp = o // (g.m // g.groups)
            dense[ol, grp * g.cge : (grp + 1) * g.cge] = w_e[o]
        dense = dense.reshape(self.mw, self.ncb, cw, g.khe, g.kwe).transpose(1, 0, 2, 3, 4)
        ol, cl, ll, mm = np.meshgrid(
            np.arange(self.mw), np.arange(cw), np.arange(g.khe), np.arange(g.kwe), indexing="ij"
        )
        idx = ol * self.slab + self.offset - (cl * hw * ww + ll * ww + mm)
        out = np.zeros((self.ncb, self.n), dtype=np.int64)
        out[:, idx.reshape(-1)] = dense.reshape(self.ncb, -1)
        return out

    @cached_property
    def out_index(self) -> np.ndarray:
        """(mw, th, tw) coefficient index of each output of a response."""
        ol, i, j = np.meshgrid(
            np.arange(self.mw), np.arange(self.th), np.arange(self.tw), indexing="ij"
        )
        return ol * self.slab + self.offset + i * self.ww + j

    @cached_property
    def _c0_offsets(self) -> np.ndarray:
        counts = np.array(
            [self.used(t, ob)[0].size for t in range(self.tiles) for ob in range(self.nob)]
        )
        per_b = int(counts.sum())
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).reshape(self.tiles, self.nob)
        return starts[None] + per_b * np.arange(self.geo.batch)[:, None, None]

    def c0_offset(self, b: int, tile: int, ob: int) -> int:
        """Where response ``(b, tile, ob)``'s used ``c0`` coefficients start in the message
        (responses in (batch, tile, output block) order, each's positions ascending)."""
        return int(self._c0_offsets[b, tile, ob])

    def used(self, tile: int, ob: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Coefficient positions a response needs (ascending) and, for each, its place
        ``(o, oh, ow)`` in the effective output (B and the tile's batch index excluded)."""
        g = self.geo
        a, b = divmod(tile, self.ntw)
        ol, i, j = np.meshgrid(
            np.arange(self.mw), np.arange(self.th), np.arange(self.tw), indexing="ij"
        )
        o, r, c = ob * self.mw + ol, a * self.th + i, b * self.tw + j
        keep = (o < g.m) & (r < g.oh) & (c < g.ow)
        pos = self.out_index[keep]
        order = np.argsort(pos, kind="stable")
        return pos[order], (o[keep][order], r[keep][order], c[keep][order])


@cache
def _tile_options(out: int) -> tuple[int, ...]:
    """Distinct tile heights worth trying: the smallest tile for each tile count."""
    return tuple(sorted({-(-out // r) for r in range(1, out + 1)}))


@cache
def _block_sizes(total: int) -> np.ndarray:
    """Distinct block sizes: the smallest block for each block count (ascending)."""
    return np.array(sorted({-(-total // r) for r in range(1, total + 1)}), dtype=np.int64)


@cache
def _tile_shapes(geo: Geometry, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (TH, TW) worth trying whose window fits the ring: (th, tw, cap, tiles) arrays with
    ``cap = n // (H_w W_w)`` and ``tiles = B * ceil(OH/TH) * ceil(OW/TW)``."""
    th, tw = np.meshgrid(
        np.array(_tile_options(geo.oh)), np.array(_tile_options(geo.ow)), indexing="ij"
    )
    th, tw = th.reshape(-1), tw.reshape(-1)
    cap = n // ((th + geo.khe - 1) * (tw + geo.kwe - 1))
    keep = cap >= 1
    th, tw, cap = th[keep], tw[keep], cap[keep]
    tiles = geo.batch * (-(-geo.oh // th)) * (-(-geo.ow // tw))
    return th, tw, cap, tiles


def best_layout(
    geo: Geometry, n: int, query_bits_of_mw, resp_bits: int
) -> tuple[Layout, int] | None:
    """The layout at ring degree ``n`` minimising ``n_in * query_bits(M_w) + n_resp * resp_bits``
    (``query_bits_of_mw(mw)`` returns ``None`` when no secure parameters exist for that ``M_w``).
    Returns (layout, that cost) or None. For a tile shape and ``M_w`` the largest ``C_w`` that
    fits is never worse (fewer query ciphertexts, same responses), so only the tile shapes
    (smallest tile for each tile count) and the ``M_w`` (smallest block for each block count)
    are searched, all at once; ``C_w`` is then the smallest block with that block count. Exact
    because ``query_bits_of_mw`` is nondecreasing in ``M_w`` and its feasible set is
    downward-closed (the noise bound grows with ``M_w``). Deterministic: the first minimum in
    (TH, TW, M_w) order."""
    th, tw, cap, tiles = _tile_shapes(geo, n)
    if th.size == 0:
        return None
    mws = _block_sizes(geo.m)
    mws = mws[mws <= int(cap.max())]
    qb = np.array([query_bits_of_mw(int(mw)) or -1 for mw in mws], dtype=np.int64)
    ok_mw = qb > 0
    if not ok_mw.any():
        return None
    mws, qb = mws[ok_mw], qb[ok_mw]
    cwmax = np.minimum(geo.ce, cap[:, None] // mws[None, :])
    fits = cwmax >= 1
    ncb = -(-geo.ce // np.maximum(cwmax, 1))
    nob = -(-geo.m // mws)
    cost = tiles[:, None] * (ncb * qb[None, :] + nob[None, :] * resp_bits)
    cost = np.where(fits, cost, np.iinfo(np.int64).max)
    k = int(np.argmin(cost))
    if not fits.reshape(-1)[k]:
        return None
    i, j = divmod(k, mws.size)
    cw = -(-geo.ce // int(ncb[i, j]))
    lay = Layout(geo, n, int(th[i]), int(tw[i]), cw, int(mws[j]))
    return lay, int(cost[i, j])
