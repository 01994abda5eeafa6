"""Max pooling: a tree of pairwise maxima, all windows and all pairs of a level batched.

Input: shares in ``Z_{2^L}`` of ``x`` with public bounds ``lo <= x <= hi`` and
``hi - lo < 2^(L-1)`` (so every difference ``d = a - b`` fits the ring signed); output shares in
``Z_{2^L'}``. Padding uses ``lo`` (P0 holds it, P1 holds 0), as in the plaintext program.

One level, ``max(a, b) = b + m*d`` with ``d = a - b`` and ``m = [d >= 0]`` (``n`` pairs):

1. Dealer: mask ``r`` (both arithmetic shares seeded), XOR shares of its ``L`` bits, comparison
   material, daBit for ``m`` and the product ``rho_m * r``.
2. Open ``c = d + r mod 2^L`` (``2*n*L`` bits).
3. ``m = 1 xor c_(L-1) xor r_(L-1) xor [c_low < r_low]`` (MSB of ``d = c - r``: one comparison of
   ``L-1`` bits, :mod:`~privquant.protocols.compare`).
4. Selection without another opening of ``d``: the opening ``c`` already masks ``d`` (``d = c - r``
   in ``Z_{2^L}``), so ``m*d = m*c - m*r`` is a polynomial in the masked bit ``m``
   (:mod:`~privquant.protocols.bitpoly`: 1 opened bit, dealer items ``rho_m`` and ``rho_m*r``).

Last level when ``L' > L`` (extension fused into the last selection, no extra round): also open
``c_b = (b - lo) + r_b`` in the same exchange as ``c``. As ``0 <= b - lo < 2^(L-1)`` and
``x_d = d + 2^(L-1)`` has MSB ``m``: ``b = lo + c_b,low - r_b,low + 2^(L-1)*beta_b`` and
``m*d = m*c_low - m*r_low + 2^(L-1)*m*beta_d`` (``beta`` the ``L-1``-bit borrows), evaluated in
``Z_{2^L'}`` with ``r_low``, ``r_b,low`` dealer-shared in ``Z_{2^L'}``. A 1x1 window with ``L' > L``
is the extension alone. Otherwise the result is reduced mod ``2^L'``.

Cost per level (``n`` pairs; ``cmp`` = :func:`compare.cost` of one ``L-1``-bit comparison per
pair, ``V``/``I`` of the selection polynomial)::

    normal level: online 2nL + cmp + 2n,   offline nL + cmp + 2nL,       rounds 1 + D + 1
    last + ext  : online 4nL + 2cmp + 6n,  offline n(2L-1) + 2cmp + 7nL', rounds 1 + D + 1
    1x1 + ext   : online 2nL + cmp + 2n,   offline n(L-1) + cmp + 2nL',   rounds 1 + D + 1

with ``D`` the depth of the ``L-1``-bit comparison tree over its digits and ``cmp`` including the
digit monomials (:mod:`~privquant.protocols.compare`); levels add up (``ceil(log2(kh*kw))``
levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from privquant.errors import PrivQuantError
from privquant.protocols import compare
from privquant.protocols.base import Protocol
from privquant.protocols.bitpoly import SELECTION, Poly, PolyPre, PolySpec
from privquant.protocols.preprocessing.base import Need
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import ZERO, Cost
from privquant.protocols.primitives.geometry import conv_out_hw
from privquant.protocols.primitives.ring import signed_bits
from privquant.protocols.transport.channel import SERVER, Party


@dataclass(frozen=True)
class MaxpoolSig:
    x_shape: tuple[int, ...]  # (N, C, H, W)
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    lo: int
    hi: int
    ell: int  # input ring L
    ell_out: int

    @cached_property
    def out_shape(self) -> tuple[int, ...]:
        oh, ow = conv_out_hw(
            self.x_shape[2], self.x_shape[3], self.kernel, self.stride, self.padding
        )
        return (self.x_shape[0], self.x_shape[1], oh, ow)

    @property
    def windows(self) -> int:
        n, c, oh, ow = self.out_shape
        return n * c * oh * ow

    @cached_property
    def levels(self) -> tuple[tuple[int, str], ...]:
        """``(pairs per window, kind)`` per level; kind is ``normal``, ``ext`` or ``ext_only``."""
        ring.check_ell(self.ell)
        ring.check_ell(self.ell_out)
        if signed_bits(self.lo - self.hi, self.hi - self.lo) > self.ell:
            raise PrivQuantError(
                f"maxpool: range [{self.lo}, {self.hi}] needs differences wider than "
                f"{self.ell} bits"
            )
        if signed_bits(self.lo, self.hi) > self.ell_out:
            raise PrivQuantError(
                f"maxpool: range [{self.lo}, {self.hi}] does not fit "
                f"the {self.ell_out}-bit output ring"
            )
        ext = self.ell_out > self.ell
        m = self.kernel[0] * self.kernel[1]
        out = []
        if m == 1 and ext:
            return ((1, "ext_only"),)
        while m > 1:
            pairs = m // 2
            m = m - pairs
            out.append((pairs, "ext" if (ext and m == 1) else "normal"))
        return tuple(out)


def _level_poly(kind: str, L: int, c_d, c_b, lo: int) -> Poly:
    H = 1 << (L - 1)
    if kind == "normal":
        m = Poly.var("m")
        return m * Poly.const(c_d) - m * Poly.arith("R")
    sel = Poly.const(c_b) + lo - Poly.arith("Rb") + H * Poly.var("bb")
    if kind == "ext":
        m = Poly.var("m")
        sel = sel + m * Poly.const(c_d) - m * Poly.arith("Rd") + H * m * Poly.var("bd")
    return sel


def _level_spec(sig: MaxpoolSig, pairs: int, kind: str) -> tuple[PolySpec, list]:
    n = sig.windows * pairs
    z = torch.zeros(1, dtype=torch.int64)
    poly = _level_poly(kind, sig.ell, z, z, sig.lo)
    if kind == "normal":
        spec = PolySpec.of(poly.reduced(sig.ell), sig.ell, n, provided=("R",))
    else:
        spec = PolySpec.of(poly.reduced(sig.ell_out), sig.ell_out, n)
    w = sig.ell - 1
    groups = (
        [compare.Group(n, 0, (w,))]
        if kind != "ext"
        else [compare.Group(n, 0, (w,)), compare.Group(n, 0, (w,))]
    )
    return spec, groups


def _level_parts(sig: MaxpoolSig, pairs: int, kind: str) -> tuple[Cost, list[Need]]:
    n, L = sig.windows * pairs, sig.ell
    spec, groups = _level_spec(sig, pairs, kind)
    opened = 2 if kind == "ext" else 1
    rbits = {"normal": L, "ext": 2 * L - 1, "ext_only": L - 1}[kind]
    online = Cost(online_bits=2 * opened * n * L, rounds=1)
    cs = compare.circuit(groups)
    online = online.then(compare.CIRCUIT.online_cost(cs)).then(SELECTION.online_cost(spec))
    needs = [Need("random", n * opened, L), Need("mask_bits", n, items=rbits)]
    return online, needs + compare.CIRCUIT.needs(cs) + SELECTION.needs(spec)


@dataclass
class LevelPre:
    r: list
    rbits: list
    cmp: compare.CmpPre
    spec: PolySpec
    poly: PolyPre


class Maxpool(Protocol):
    """Max pooling by a tree of secret comparisons (see the module docstring)."""

    kind = "maxpool"

    def online_cost(self, sig: MaxpoolSig) -> Cost:
        out = ZERO
        for pairs, kind in sig.levels:
            out = out.then(_level_parts(sig, pairs, kind)[0])
        return out

    def needs(self, sig: MaxpoolSig) -> list[Need]:
        return [x for pairs, kind in sig.levels for x in _level_parts(sig, pairs, kind)[1]]

    def offline(self, corr, sig: MaxpoolSig, state=None) -> list[LevelPre]:
        L = sig.ell
        H = 1 << (L - 1)
        pres = []
        for pairs, kind in sig.levels:
            n = sig.windows * pairs
            spec, groups = _level_spec(sig, pairs, kind)
            masks = []
            if kind in ("normal", "ext"):
                masks.append(("d", L, corr.random((n,), L)))
            if kind in ("ext", "ext_only"):
                masks.append(("b", L - 1, corr.random((n,), L)))
            rbits = [corr.mask_bits(r, nb) for _nm, nb, r in masks]
            cmp = compare.CIRCUIT.offline(
                corr, compare.circuit(groups), masks=[r.value for _nm, _nb, r in masks]
            )
            rv = {nm: r for nm, _nb, r in masks}
            if kind == "normal":
                fns = {"R": lambda rv=rv: rv["d"].value}
            else:
                fns = {"Rb": lambda rv=rv: rv["b"].value & (H - 1)}
                if kind == "ext":
                    fns["Rd"] = lambda rv=rv: rv["d"].value & (H - 1)
            ppre = SELECTION.offline(corr, spec, arith=fns)
            pres.append(LevelPre([r.share for _nm, _nb, r in masks], rbits, cmp, spec, ppre))
        return pres

    def online(
        self, party: Party, sig: MaxpoolSig, pre: list[LevelPre], x: torch.Tensor
    ) -> torch.Tensor:
        if tuple(x.shape) != tuple(sig.x_shape):
            raise PrivQuantError(
                f"maxpool: share has shape {tuple(x.shape)}, expected {sig.x_shape}"
            )
        L, Lo = sig.ell, sig.ell_out
        H = 1 << (L - 1)
        (kh, kw), (sh, sw), (ph, pw) = sig.kernel, sig.stride, sig.padding
        pad_value = ring.reduce(torch.tensor(sig.lo), L).item() if party.rank == SERVER else 0
        xp = F.pad(ring.reduce(x, L), (pw, pw, ph, ph), value=pad_value)
        win = xp.unfold(2, kh, sh).unfold(3, kw, sw).reshape(sig.windows, kh * kw)
        for lv, ((pairs, kind), p) in enumerate(zip(sig.levels, pre)):
            tag = f"mp{lv}"
            n = sig.windows * pairs
            a = win[:, 0 : 2 * pairs : 2].reshape(-1)
            b = win[:, 1 : 2 * pairs : 2].reshape(-1)
            if kind == "ext_only":
                b = win[:, 0]
            rest = win[:, 2 * pairs :]
            lo_sh = sig.lo if party.rank == SERVER else 0
            opens = []
            if kind in ("normal", "ext"):
                opens.append(ring.reduce(a - b + p.r[0], L))
            if kind in ("ext", "ext_only"):
                opens.append(ring.reduce(b - lo_sh + p.r[-1], L))
            mine = torch.cat(opens)
            cs = ring.reduce(mine + party.exchange(mine, L, f"{tag}.open"), L).split(n)
            groups = _level_spec(sig, pairs, kind)[1]
            data = [(rb, c, [c]) for rb, c in zip(p.rbits, cs)]
            res_all = compare.CIRCUIT.online(
                party, compare.circuit(groups), p.cmp, data, f"{tag}.cmp"
            )
            lts = [res[0] for res in res_all]
            bits = {}
            if kind in ("normal", "ext"):
                cd = cs[0]
                top = ((cd >> (L - 1)) & 1) ^ 1
                top = top.to(torch.uint8) if party.rank == SERVER else torch.zeros_like(lts[0])
                bits["m"] = top ^ p.rbits[0][L - 1] ^ lts[0]
                if kind == "ext":
                    bits["bd"] = lts[0]
            if kind in ("ext", "ext_only"):
                bits["bb"] = lts[-1]
            if kind == "normal":
                poly = _level_poly(kind, L, cs[0], None, sig.lo).reduced(L)
                sel = SELECTION.online(
                    party, p.spec, p.poly, poly, bits, {"R": p.r[0]}, tag=f"{tag}.sel"
                )
                res = ring.reduce(b + sel, L)
            else:
                c_d = cs[0] & (H - 1) if kind == "ext" else None
                poly = _level_poly(kind, L, c_d, cs[-1] & (H - 1), sig.lo).reduced(Lo)
                res = SELECTION.online(party, p.spec, p.poly, poly, bits, tag=f"{tag}.sel")
            win = (
                torch.cat([res.reshape(sig.windows, -1), rest], dim=1)
                if kind != "ext_only"
                else res.reshape(sig.windows, 1)
            )
        # the last level left shares in Z_{2^L'} (ext) or Z_{2^L} with L' <= L: reduce either way
        return ring.reduce(win.reshape(sig.out_shape), Lo)


MAXPOOL = Maxpool()
