"""Secure argmax / top-k: the client learns only the indices of the ``k`` largest logits.

Input: shares in ``Z_{2^Lin}`` of the logits ``x`` (``n`` samples of ``C`` classes, public bounds
``lo <= x <= hi``, ``Lin >= Ld = signed_bits(lo - hi, hi - lo)`` so differences fit); output:
shares in ``Z_{2^Lo}`` of the ``k`` indices per sample, in order: largest logit first, equal
logits by lower index first (``torch.sort(x, descending=True, stable=True)``; for ``k = 1`` this
is ``torch.argmax``). ``Lo = signed_bits(0, C - 1)`` is the ring of the label tensor; the output
op (:class:`~privquant.protocols.basic.Output`) then opens it to the client alone.

Three plans, chosen per signature by their closed-form costs (:attr:`ArgmaxSig.plan`: fewer
rounds, then fewer bits): ``flat`` (``k = 1``, ``3 <= C <= 17``) and ``rank`` (any ``k``,
``3 <= C <= 33``) take a constant number of rounds; ``network`` takes ``O(log^2 C)`` layers but
fewer bits and serves every ``C``. All start from the same local packing and comparison step.

1. **Index packing, local.** With ``s = Lo`` and ``L = Ld + s``, each party forms
   ``p_i = x_i * 2^s + (C - 1 - i)`` in ``Z_{2^L}`` (shares of ``x mod 2^Ld`` times ``2^s`` are
   shares of ``x * 2^s mod 2^L``; P0 adds the public ``C - 1 - i``). The ``p_i`` are distinct,
   their order is the output order (ties by lower index), every difference fits ``L`` bits signed,
   and the low ``s`` bits of a ``p`` are ``C - 1 - index``: the winner carries its own index, so no
   index has to be tracked or selected separately and ties need no extra comparison.
2. **Comparison** of ``m`` packed differences ``d = a - b`` at once (all samples), as a level of
   :mod:`~privquant.protocols.maxpool`: open ``c = d + r mod 2^L`` with a dealer mask ``r``;
   ``t = [d > 0] = 1 xor msb(c) xor r_(L-1) xor [c_low < r_low]`` (XOR shares) by one
   ``(L-1)``-bit comparison circuit (:mod:`~privquant.protocols.compare`, depth ``D``).

``network`` (any ``k``; the tournament for ``k = 1``):

3. Batcher's odd-even merge (any list lengths) in a tree: adjacent sorted lists are merged
   pairwise, each merge truncated to its ``k`` largest; then every comparator none of whose
   outputs reaches the ``k`` outputs is dropped, and the rest are scheduled as early as possible
   into layers (:func:`~privquant.protocols.argmax_plans.network`). For ``k = 1`` this is the
   tournament of ``C - 1`` comparators in ``ceil(log2 C)`` layers.
4. Per layer (its ``n_l`` comparators over all samples): step 2, then
   ``t*(a - b) = t*c - t*r`` by the selection polynomial (:mod:`~privquant.protocols.bitpoly`,
   one opened bit), and locally ``max = b + t*(a - b)``, ``min = a - t*(a - b)``. A layer whose
   every used output is a final output evaluates the selection in ``Z_{2^Lo}`` (the identity
   holds modulo any power of two dividing ``2^L``), the others in ``Z_{2^L}``.
5. ``index = (C - 1) - (p mod 2^s)`` at the ``k`` output wires, locally, in ``Z_{2^Lo}``.

``flat`` (``k = 1``; :class:`~privquant.protocols.argmax_plans.Flat`):

3. Step 2 on all ``P = C(C-1)/2`` pairs ``i < j`` at once: ``t_ij = [p_i > p_j]``.
4. Class ``i`` wins iff it beats every other: ``win_i = AND_j y_ij`` with ``y_ij = t_ij`` (``j >
   i``) or ``1 xor t_ji`` (``j < i``). With ``C - 1 > 4``: ``G`` groups of ``S <= 4`` win bits
   (padded with the constant 1) are ANDed first -- one selection polynomial ``x_1*...*x_S`` in
   ``Z_4`` whose low bit gives XOR shares -- then
5. ``index = sum_(i >= 1) i * AND_g a_(i,g)`` (or of all ``y_ij`` when ``C - 1 <= 4``) is ONE
   selection polynomial in ``Z_{2^Lo}``: exactly one class wins, so it is the argmax index.

``rank`` (any ``k``):

3. Step 2 on all pairs, and the pairs' bits to ``Z_{2^w}`` (``w = max(2, bits(C - 1))``) by a
   linear selection polynomial (one opened bit each).
4. Ranks, locally: ``b_i = #{j : p_j > p_i} = sum_(j<i) t_ji + sum_(j>i) (1 - t_ij)``.
5. Open ``c_i = b_i + r_i mod 2^w`` (dealer mask ``r_i``, ``w`` bits); ``[b_i == m] = [(c_i - m)
   mod 2^w == r_i]`` is XOR-linear in the monomials of ``r_i``'s bits (dealer: the ``2^w - w - 1``
   multi-bit ones; a one-digit leaf of :mod:`~privquant.protocols.compare`), for ``m < k``.
6. ``index_m = sum_(i >= 1) i * [b_i == m]``: one selection polynomial per output position.

Cost (``cmp(m)`` = :class:`~privquant.protocols.compare.Circuit` cost of ``m`` comparisons of
``L - 1`` bits, depth ``D``; selection ``V`` opened bits and ``I`` dealer items per element)::

    step 2 on m:  online 2*m*L + cmp_online(m), rounds 1 + D;  offline m*L + cmp_offline(m)
    network:      sum over layers (m = n_l) of step 2 + online 2*n_l, rounds 1,
                  offline 2*n_l*Ls (items rho, rho*r in the layer's ring Ls)
    flat:         step 2 on m = n*P
                  + [G > 0] online 2*n*(C-1)*G*S, rounds 1, offline n*(C-1)*G*(2^S - 1)*2
                  + online 2*n*(C-1)*F, rounds 1, offline n*(C-1)*(2^F - 1)*Lo
                  (F = G, or C - 1 when G = 0)
    rank:         step 2 on m = n*P + online 2*n*P, rounds 1, offline n*P*w (B2A)
                  + online 2*n*C*w, rounds 1, offline n*C*w + n*C*(2^w - w - 1)  (ranks)
                  + online 2*n*k*(C-1), rounds 1, offline n*k*(C-1)*Lo          (indices)

e.g. ``C = 10``: label by ``network`` 4 layers of ``2 + D`` rounds, by ``flat`` ``3 + D``
rounds for about four times the bits; top-3 by ``network`` 8 layers, by ``rank`` ``4 + D``
rounds (a few thousand bits per image, against megabytes for the network before it).
Security: every value the parties exchange is masked by dealer randomness the receiver does not
hold (``c`` by ``r``, the circuit's operands and the selections' bits by dealer bits), so the
client's view is the output opening (the ``k`` indices) plus uniformly masked values.

``ot`` preprocessing: the protocol needs the kinds ``mask_bits``, ``gates``, ``monomials`` and
``products`` (as :mod:`~privquant.protocols.maxpool`), which only a dealer makes cheaply; the
dealer-free version is :mod:`privquant.protocols.ot.argmax` (the same plans and outputs on OT
comparisons, COT selections and OT equality leaves).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from privquant.errors import PrivQuantError
from privquant.protocols import compare
from privquant.protocols.argmax_plans import (
    FLAT_MAX_CLASSES,
    RANK_MAX_CLASSES,
    Flat,
    Network,
    flat_plan,
    network,
)
from privquant.protocols.base import Protocol
from privquant.protocols.bitpoly import SELECTION, Poly, PolyPre, PolySpec
from privquant.protocols.preprocessing.base import Need, need_cost
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import ZERO, Cost
from privquant.protocols.primitives.ring import signed_bits
from privquant.protocols.transport.channel import SERVER, Party

MAX_CLASSES = 4096


# ------------------------------------------------------------------------------ signature
@dataclass(frozen=True)
class ArgmaxSig:
    n: int  # samples
    classes: int  # C
    k: int
    lo: int  # public bounds of the logits
    hi: int
    ell_in: int  # ring of the logits' shares
    ell_out: int  # ring of the index shares (Lo)
    force: str | None = None  # a plan instead of the cheapest (tests, benchmarks)

    @cached_property
    def ell_diff(self) -> int:
        return signed_bits(self.lo - self.hi, self.hi - self.lo)

    @property
    def shift(self) -> int:
        return self.ell_out

    @cached_property
    def ell(self) -> int:
        """``L = Ld + s``: the ring of the packed values (checked)."""
        if not 1 <= self.classes <= MAX_CLASSES:
            raise PrivQuantError(f"argmax over {self.classes} classes (limit {MAX_CLASSES})")
        if self.lo > self.hi:
            raise PrivQuantError(f"argmax: empty range [{self.lo}, {self.hi}]")
        if self.ell_in < self.ell_diff:
            raise PrivQuantError(
                f"argmax: range [{self.lo}, {self.hi}] needs differences wider than "
                f"{self.ell_in} bits"
            )
        if self.ell_out < signed_bits(0, self.classes - 1):
            raise PrivQuantError(f"argmax: {self.classes} indices do not fit {self.ell_out} bits")
        ring.check_ell(self.ell_in)
        ring.check_ell(self.ell_out)
        return ring.check_ell(self.ell_diff + self.shift)

    @property
    def net(self) -> Network:
        return network(self.classes, self.k)

    def layer_ring(self, lv: int) -> int:
        return self.ell_out if self.net.final[lv] else self.ell

    @cached_property
    def plan(self) -> str:
        """``network``, ``flat`` (``k = 1``, ``3 <= C <= 17``) or ``rank`` (``3 <= C <= 33``):
        the candidate with fewer rounds, then fewer bits, by closed-form cost."""
        _ = self.ell
        plans = ["network"]
        if self.k == 1 and 3 <= self.classes <= FLAT_MAX_CLASSES:
            plans.append("flat")
        if 3 <= self.classes <= RANK_MAX_CLASSES:
            plans.append("rank")
        if self.force is not None:
            if self.force not in plans:
                raise PrivQuantError(f"argmax plan {self.force!r} is not one of {plans} here")
            return self.force

        def key(plan):
            online, needs = _parts(self, plan)
            c = online.then(need_cost(needs, "dealer"))
            return (c.rounds, c.online_bits + c.offline_bits)

        return min(plans, key=key)

    @property
    def rank_ell(self) -> int:
        """Ring of the ranks ``b_i in [0, C - 1]`` (``rank`` plan; one comparison digit)."""
        return max(2, (self.classes - 1).bit_length())


def _poly(c) -> Poly:
    t = Poly.var("m")
    return t * Poly.const(c) - t * Poly.arith("R")


def _cmp_parts(sig: ArgmaxSig, n: int) -> tuple[Cost, list[Need], list[compare.Group]]:
    """Open ``n`` masked differences and compare: ``2*n*L`` bits, 1 round, then the circuit."""
    L = sig.ell
    groups = [compare.Group(n, 0, (L - 1,))]
    cs = compare.circuit(groups)
    online = Cost(online_bits=2 * n * L, rounds=1).then(compare.CIRCUIT.online_cost(cs))
    needs = [Need("random", n, L), Need("mask_bits", n, items=L), *compare.CIRCUIT.needs(cs)]
    return online, needs, groups


def _layer_spec(sig: ArgmaxSig, lv: int) -> PolySpec:
    n = sig.n * len(sig.net.layers[lv])
    ls = sig.layer_ring(lv)
    z = torch.zeros(1, dtype=torch.int64)
    return PolySpec.of(_poly(z).reduced(ls), ls, n, provided=("R",))


def _flat_polys(f: Flat) -> tuple[Poly | None, Poly]:
    mid = None
    if f.groups:
        mid = Poly.const(1)
        for q in range(f.size):
            mid = mid * Poly.var(f"x{q}")
    fin = Poly()
    for i in range(1, f.classes):
        term = Poly.const(i)
        for g in range(f.final_vars):
            term = term * Poly.var(f"w{i}.{g:02d}")
        fin = fin + term
    return mid, fin


def _flat_specs(sig: ArgmaxSig) -> tuple[PolySpec | None, PolySpec]:
    f = flat_plan(sig.classes)
    mid, fin = _flat_polys(f)
    m = None if mid is None else PolySpec.of(mid, 2, sig.n * (f.classes - 1) * f.groups)
    return m, PolySpec.of(fin.reduced(sig.ell_out), sig.ell_out, sig.n)


def _parts(sig: ArgmaxSig, plan: str) -> tuple[Cost, list[Need]]:
    online, needs = ZERO, []
    if plan == "network":
        for lv in range(len(sig.net.layers)):
            o, nd, _ = _cmp_parts(sig, sig.n * len(sig.net.layers[lv]))
            spec = _layer_spec(sig, lv)
            online = online.then(o).then(SELECTION.online_cost(spec))
            needs += nd + SELECTION.needs(spec)
        return online, needs
    o, needs, _ = _cmp_parts(sig, sig.n * len(flat_plan(sig.classes).pairs))
    online = o
    specs = _flat_specs(sig) if plan == "flat" else _rank_specs(sig)
    if plan == "rank":  # between the two selections: open the masked ranks, local equalities
        n, w = sig.n * sig.classes, sig.rank_ell
        online = online.then(SELECTION.online_cost(specs[0]))
        online = online.then(Cost(online_bits=2 * n * w, rounds=1))
        needs = [
            *needs,
            *SELECTION.needs(specs[0]),
            Need("random", n, w),
            Need("mask_bits", n, items=w),
            Need("monomials", n * len(compare.multi_masks(w))),
        ]
        specs = (None, specs[1])
    for spec in specs:
        if spec is not None:
            online = online.then(SELECTION.online_cost(spec))
            needs = needs + SELECTION.needs(spec)
    return online, needs


def _rank_specs(sig: ArgmaxSig) -> tuple[PolySpec, PolySpec]:
    """B2A of every pair's bit (``t`` in ``Z_{2^w}``), and ``index_m = sum_i i * e_i``."""
    pairs = len(flat_plan(sig.classes).pairs)
    b2a = PolySpec.of(Poly.var("t"), sig.rank_ell, sig.n * pairs)
    fin = Poly()
    for i in range(1, sig.classes):
        fin = fin + Poly.const(i) * Poly.var(f"e{i:02d}")
    return b2a, PolySpec.of(fin.reduced(sig.ell_out), sig.ell_out, sig.n * sig.k)


@dataclass
class CmpPre:
    r: torch.Tensor | None  # this party's share of the mask (None at the dealer)
    value: torch.Tensor | None  # the mask where the provider knows it (dealer), else None
    rbits: torch.Tensor | None
    cmp: compare.CmpPre
    groups: list


@dataclass
class LayerPre:
    cmp: CmpPre
    spec: PolySpec
    poly: PolyPre


@dataclass
class FlatPre:
    cmp: CmpPre
    mid: tuple[PolySpec, PolyPre] | None
    fin: tuple[PolySpec, PolyPre]


@dataclass
class RankPre:
    cmp: CmpPre
    b2a: tuple[PolySpec, PolyPre]
    r: torch.Tensor | None  # shares of the rank masks (n*C,) in Z_{2^w}
    rbits: torch.Tensor | None  # XOR shares of their bits (w, n*C)
    monos: torch.Tensor | None  # XOR shares of their multi-bit monomials (M, n*C)
    fin: tuple[PolySpec, PolyPre]


class Argmax(Protocol):
    """Secure argmax / top-k on index-packed logits (module docstring)."""

    kind = "argmax"

    def online_cost(self, sig: ArgmaxSig) -> Cost:
        return _parts(sig, sig.plan)[0]

    def needs(self, sig: ArgmaxSig) -> list[Need]:
        return _parts(sig, sig.plan)[1]

    # -- the comparison of masked differences (the part a dealer-free version replaces)
    def cmp_offline(self, corr, sig: ArgmaxSig, n: int) -> CmpPre:
        L = sig.ell
        _o, _nd, groups = _cmp_parts(sig, n)
        r = corr.random((n,), L)
        rbits = corr.mask_bits(r, L)
        cmp = compare.CIRCUIT.offline(corr, compare.circuit(groups), masks=[r.value])
        return CmpPre(r.share, r.value, rbits, cmp, groups)

    def cmp_online(self, party: Party, sig: ArgmaxSig, pre: CmpPre, d, tag: str):
        """XOR shares of ``[d > 0]`` for shares ``d`` (n,) of non-zero differences in
        ``Z_{2^L}``, and the opened ``c = d + r``."""
        L = sig.ell
        mine = ring.reduce(d + pre.r, L)
        c = ring.reduce(mine + party.exchange(mine, L, f"{tag}.open"), L)
        (lt,) = compare.CIRCUIT.online(
            party, compare.circuit(pre.groups), pre.cmp, [(pre.rbits, c, [c])], f"{tag}.cmp"
        )[0]
        top = ((c >> (L - 1)) & 1) ^ 1
        top = top.to(torch.uint8) if party.rank == SERVER else torch.zeros_like(lt)
        return top ^ pre.rbits[L - 1] ^ lt, c

    # -- the protocol
    def offline(self, corr, sig: ArgmaxSig, state=None):
        if sig.plan == "rank":
            b2a, fin = _rank_specs(sig)
            cmp = self.cmp_offline(corr, sig, b2a.n)
            b2a_pre = SELECTION.offline(corr, b2a)
            n, w = sig.n * sig.classes, sig.rank_ell
            r = corr.random((n,), w)
            rbits = corr.mask_bits(r, w)
            masks = compare.multi_masks(w)

            def monomials() -> torch.Tensor:
                rb = ring.bits(r.value.reshape(-1), w)
                rows = []
                for m in masks:
                    bits = [i for i in range(w) if m >> i & 1]
                    v = rb[bits[0]].clone()
                    for i in bits[1:]:
                        v &= rb[i]
                    rows.append(v)
                return torch.stack(rows).to(torch.uint8)

            flat = corr.gates_and_monomials([], 0, monomials, n * len(masks))
            monos = None if flat is None else flat.reshape(len(masks), n)
            return RankPre(cmp, (b2a, b2a_pre), r.share, rbits, monos,
                           (fin, SELECTION.offline(corr, fin)))  # fmt: skip
        if sig.plan == "flat":
            mid, fin = _flat_specs(sig)
            cmp = self.cmp_offline(corr, sig, fin.n * len(flat_plan(sig.classes).pairs))
            m = None if mid is None else (mid, SELECTION.offline(corr, mid))
            return FlatPre(cmp, m, (fin, SELECTION.offline(corr, fin)))
        out = []
        for lv in range(len(sig.net.layers)):
            spec = _layer_spec(sig, lv)
            cmp = self.cmp_offline(corr, sig, spec.n)
            ppre = SELECTION.offline(corr, spec, arith={"R": lambda cmp=cmp: cmp.value})
            out.append(LayerPre(cmp, spec, ppre))
        return out

    def online(self, party: Party, sig: ArgmaxSig, pre, x: torch.Tensor) -> torch.Tensor:
        C, L, s = sig.classes, sig.ell, sig.shift
        if tuple(x.shape) != (sig.n, C):
            raise PrivQuantError(f"argmax: share has shape {tuple(x.shape)}, expected {(sig.n, C)}")
        w = ring.reduce(ring.reduce(x, sig.ell_diff) << s, L)
        if party.rank == SERVER:
            w = ring.reduce(w + torch.arange(C - 1, -1, -1, dtype=torch.int64), L)
        if sig.plan == "flat":
            return self._flat(party, sig, pre, w)
        if sig.plan == "rank":
            return self._rank(party, sig, pre, w)
        for lv, (layer, p) in enumerate(zip(sig.net.layers, pre)):
            ls = sig.layer_ring(lv)
            hi = torch.tensor([c[0] for c in layer], dtype=torch.long)
            lo = torch.tensor([c[1] for c in layer], dtype=torch.long)
            a, b = w[:, hi], w[:, lo]
            t, c = self.cmp_online(party, sig, p.cmp, ring.reduce(a - b, L).reshape(-1), f"am{lv}")
            poly = _poly(c).reduced(p.spec.ell)
            td = SELECTION.online(
                party, p.spec, p.poly, poly, {"m": t}, {"R": p.cmp.r}, tag=f"am{lv}.sel"
            ).reshape(a.shape)
            w = w.clone()
            w[:, hi] = ring.reduce(b + td, ls)
            w[:, lo] = ring.reduce(a - td, ls)
        out = w[:, list(sig.net.outputs)]
        idx = -ring.reduce(out, s)
        if party.rank == SERVER:
            idx = idx + (C - 1)
        return ring.reduce(idx, sig.ell_out)

    def _flat(self, party: Party, sig: ArgmaxSig, pre: FlatPre, w: torch.Tensor) -> torch.Tensor:
        f, n, L = flat_plan(sig.classes), sig.n, sig.ell
        ii = torch.tensor([i for i, _ in f.pairs], dtype=torch.long)
        jj = torch.tensor([j for _, j in f.pairs], dtype=torch.long)
        d = ring.reduce(w[:, ii] - w[:, jj], L).reshape(-1)
        t, _c = self.cmp_online(party, sig, pre.cmp, d, "amf")
        t = torch.cat([t.reshape(n, -1), torch.zeros((n, 1), dtype=torch.uint8)], dim=1)
        mine = 1 if party.rank == SERVER else 0
        q = torch.tensor([[pq for pq, _ in win] for win in f.wins], dtype=torch.long)
        neg = torch.tensor([[ng if pq >= 0 else 1 for pq, ng in win] for win in f.wins],
                           dtype=torch.uint8)  # fmt: skip
        y = t[:, q] ^ (neg * mine)  # (n, C-1, G*s): win bits; padding = constant 1
        if f.groups:
            spec, ppre = pre.mid
            y = y.reshape(n, f.classes - 1, f.groups, f.size)
            bits = {f"x{k}": y[..., k].reshape(-1) for k in range(f.size)}
            mid, _fin = _flat_polys(f)
            a = SELECTION.online(party, spec, ppre, mid, bits, tag="amf.and")
            y = (a & 1).to(torch.uint8).reshape(n, f.classes - 1, f.groups)  # Z_4 -> XOR
        spec, ppre = pre.fin
        bits = {
            f"w{i}.{g:02d}": y[:, i - 1, g]
            for i in range(1, f.classes)
            for g in range(f.final_vars)
        }
        fin = _flat_polys(f)[1].reduced(sig.ell_out)
        idx = SELECTION.online(party, spec, ppre, fin, bits, tag="amf.index")
        return idx.reshape(n, 1)

    def _rank(self, party: Party, sig: ArgmaxSig, pre: RankPre, w: torch.Tensor) -> torch.Tensor:
        f, n, L, C, wb = flat_plan(sig.classes), sig.n, sig.ell, sig.classes, sig.rank_ell
        ii = torch.tensor([i for i, _ in f.pairs], dtype=torch.long)
        jj = torch.tensor([j for _, j in f.pairs], dtype=torch.long)
        d = ring.reduce(w[:, ii] - w[:, jj], L).reshape(-1)
        t, _c = self.cmp_online(party, sig, pre.cmp, d, "amr")
        spec, ppre = pre.b2a
        ta = SELECTION.online(party, spec, ppre, Poly.var("t"), {"t": t}, tag="amr.b2a")
        ta = ta.reshape(n, len(f.pairs))
        # rank b_i = #{j : p_j > p_i} = sum_(j<i) t_ji + sum_(j>i) (1 - t_ij)
        b = torch.zeros((n, C), dtype=torch.int64)
        b.index_add_(1, jj, ta)
        b.index_add_(1, ii, -ta)
        if party.rank == SERVER:
            b = b + torch.arange(C - 1, -1, -1, dtype=torch.int64)
        mine = ring.reduce(b.reshape(-1) + pre.r, wb)
        c = ring.reduce(mine + party.exchange(mine, wb, "amr.rank"), wb)
        # [b_i == m] = [(c_i - m) mod 2^w == r_i]: XOR-linear in the monomials of r_i's bits
        full = torch.empty((1 << wb, n * C), dtype=torch.uint8)
        full[0] = 1 if party.rank == SERVER else 0
        for q in range(wb):
            full[1 << q] = pre.rbits[q]
        for row, m in enumerate(compare.multi_masks(wb)):
            full[m] = pre.monos[row]
        eq_t = _eq_table(wb)
        e = torch.stack(
            [((eq_t[ring.reduce(c - m, wb)] & full.T).sum(1) & 1).to(torch.uint8)
             for m in range(sig.k)]
        ).reshape(sig.k, n, C)  # fmt: skip
        spec, ppre = pre.fin
        bits = {f"e{i:02d}": e[:, :, i].transpose(0, 1).reshape(-1) for i in range(1, C)}
        poly = Poly()
        for i in range(1, C):
            poly = poly + Poly.const(i) * Poly.var(f"e{i:02d}")
        idx = SELECTION.online(party, spec, ppre, poly.reduced(sig.ell_out), bits, tag="amr.index")
        return idx.reshape(n, sig.k)


_EQ: dict[int, torch.Tensor] = {}


def _eq_table(s: int) -> torch.Tensor:
    """ANF coefficients (2^s public values v, 2^s monomial masks) uint8 of ``r -> [v == r]``
    over ``s``-bit ``r``: ``[v == r]`` is the parity of row ``v`` AND the monomials of ``r``."""
    if s not in _EQ:
        vals = range(1 << s)
        _EQ[s] = torch.tensor(
            [compare._anf([int(v == r) for r in vals]) for v in vals], dtype=torch.uint8
        )
    return _EQ[s]


ARGMAX = Argmax()
