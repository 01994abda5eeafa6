"""Secure argmax / top-k without a dealer: the client learns only the indices of the ``k``
largest logits. Same signature (:class:`~privquant.protocols.argmax.ArgmaxSig`), output (shares
in ``Z_2^Lo`` of the ``k`` indices, largest first, equal logits by lower index first, as
``plain_topk``), public plans and plan limits as the dealer protocol
(:mod:`privquant.protocols.argmax`); the output op then opens the ``k`` indices to the client.

Source: the tournament / comparator-network argmax of secure inference (SecureML, CrypTFlow2's
ArgMax) and the constant-round all-pairs argmax (as the dealer ``flat`` / ``rank`` plans), built
from SCI's dealer-free gadgets (Rathee et al., CCS 2020): the millionaire with chosen-index leaf
OTs and OT triples (:mod:`.circuit`), COT products / multiplexers (:mod:`.select`,
:mod:`.cotprod`) and a 1-out-of-2^w OT lookup (:mod:`~privquant.protocols.preprocessing.ot.nofn`).

**Comparison stage** ``Cmp(m, Lc)`` (``m`` differences ``d`` that fit ``Lc`` bits signed; after
:mod:`.maxpool`): offline P1 draws ``r`` uniform in ``Z_2^Lc`` (its CSPRNG) and fixes the leaf
OTs' indices to its digits of ``r``; online P1 sends ``d1 + r``, P0 learns ``c = d + r`` (1
message), and ``[d >= 0] = 1 xor msb(c) xor r_(Lc-1) xor [c mod 2^(Lc-1) < r mod 2^(Lc-1)]``
as XOR shares (P0 holds ``1 xor msb(c)``, P1 ``r_(Lc-1)``; the ``(Lc-1)``-bit comparison:
leaves P0 -> P1, then ``D`` exchanges). **Selection stage** ``Sel``: a polynomial in XOR-shared
bits by COT products, one exchange (:mod:`.select`).

``network`` (any ``C``, ``k``; for ``k = 1`` the tournament of ``C - 1`` comparators in
``ceil(log2 C)`` layers, :func:`~privquant.protocols.argmax_plans.network`):

1. index packing, local: ``p_i = x_i * 2^s + (C - 1 - i)`` in ``Z_2^L`` (``s = Lo``,
   ``L = Ld + s``; P0 adds the constant). Distinct, in output order; ``p mod 2^s = C-1-index``.
2. per layer, its ``n_l`` comparators ``(hi, lo)`` over all ``n`` samples (``m = n*n_l``):
   ``Cmp(m, L)`` on ``d = p_hi - p_lo`` (never 0), then ``Sel``: ``u = t*c - t*r`` (one COT with
   P1 choosing on P0's ``c``, one with P0 choosing on P1's ``r``) in ``Z_2^Ls`` (``Ls = Lo`` if
   every used output of the layer is a network output, else ``L``); locally
   ``p_hi = p_lo + u`` (max), ``p_lo = p_hi - u`` (min).
3. ``index = (C - 1) - (p mod 2^s)`` at the ``k`` output wires, locally.

``flat`` (``k = 1``, ``3 <= C <= 17``) and ``rank`` (any ``k``, ``3 <= C <= 33``) compare all
``P = C(C-1)/2`` pairs at once, on the logits themselves: ``[p_i > p_j] = [x_i >= x_j]`` for
``i < j`` (:func:`pair_ring`: ``Cmp(n*P, Ld)``, ``s`` bits fewer per comparison than packed).

* ``flat``: class ``i`` wins iff it beats all others (win bits ``t_ij`` / ``1 xor t_ji``,
  grouping of :func:`~privquant.protocols.argmax_plans.flat_plan`): ``G`` groups of ``S`` bits
  ANDed by one ``Sel`` in ``Z_2`` (``prod`` of ``S`` bits: ``2^S - 1`` one-bit COTs), then
  ``index = sum_(i>=1) i * AND_g a_(i,g)`` by one ``Sel`` in ``Z_2^Lo`` (exactly one winner).
* ``rank``: ``t`` to ``Z_2^w`` (``w = max(2, bits(C-1))``) by one ``Sel`` (one COT each);
  ranks locally ``b_i = sum_(j<i) t_ji + sum_(j>i) (1 - t_ij)``; stage ``Eq``: P1 sends
  ``b1 + r'`` (``r'`` its own ``w``-bit mask), P0 learns ``c' = b + r'`` and sends, through one
  1-out-of-2^w OT per rank whose index P1 fixed offline to ``r'``, the table
  ``T(v) = bits_(j<k) [(c' - j) mod 2^w == v]`` masked by its OT keys and a random ``rho`` (P1
  gets ``T(r') xor rho``: XOR shares of ``[b_i == j]``); then ``index_j = sum_(i>=1) i *
  [b_i == j]`` by one ``Sel`` in ``Z_2^Lo``.

The plan: ``sig.force`` if given, else the candidate with fewer online rounds, then fewer bits
(closed forms, :func:`choose`). Every stage's OTs go into ONE offline batch.

Cost (SoftSpokenOT ``k_ot``; ``cmp(m, Lc)`` the :mod:`.circuit` cost of ``m`` one-job
``(Lc-1)``-bit comparisons, depth ``D``; ``sel`` = :meth:`.select.SelSpec.cost`: online
``m*(w_S + 1)``, offline ``m*(128/k_ot - 1)`` per product group ``S`` of width ``w_S``)::

    Cmp(m, Lc): online m*Lc + cmp.online,  offline cmp.offline;   steps 10, 01, D x "x"
    Sel:        online sel.online,          offline sel.offline;   steps "x"
    Eq(N, w, k): online N*(w + 2^w * k),    offline N*w*(128/k_ot); steps 10, 01
    network = sum over layers [Cmp(n*n_l, L) + Sel(2 products, width Ls_l)]
    flat    = Cmp(n*P, Ld) + [G > 0] Sel(n*(C-1)*G elements, 2^S - 1 products of 1 bit)
              + Sel(n elements, (C-1)*(2^F - 1) products of Lo - v2(i) bits; F = G or C - 1)
    rank    = Cmp(n*P, Ld) + Sel(n*P, 1 product of w bits) + Eq(n*C, w, k)
              + Sel(n*k elements, C - 1 products of Lo - v2(i) bits)
    online rounds = lamport_depth(steps), offline rounds = 1 (0 when nothing is sent)

e.g. ``C = 10``, ``Ld = 16``, ``Lo = 5``, one image, ``k_ot = 4``: label by ``flat`` 6 rounds,
8987 online + 34992 offline bits (``network``: 24 rounds, 2011 + 8550 bits; the dealer's
``flat``: 6 rounds, 3456 + 3168 bits); top-3 by ``rank`` 7 rounds, 9166 + 30692 bits.

Security (semi-honest, as SCI): P0 sees ``c = d + r`` and ``c' = b + r'`` with P1's uniform
masks; P1 receives leaf tables and lookup tables masked by OT keys it lacks and P0's random
output shares, triple openings and COT messages masked by random OT keys and choices. The
client's view is thus uniform apart from the final opening of the ``k`` indices (tested with the
client's randomness fixed: ``tests/protocols/otmode/test_ot_argmax.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.argmax import ArgmaxSig, _flat_polys
from privquant.protocols.argmax_plans import FLAT_MAX_CLASSES, RANK_MAX_CLASSES, flat_plan
from privquant.protocols.bitpoly import Poly
from privquant.protocols.ot import circuit, cotprod, select
from privquant.protocols.ot.common import (
    EXCHANGE,
    SEND01,
    SEND10,
    Batch,
    OtProtocol,
    lamport_depth,
    private_ring,
    session_of,
)
from privquant.protocols.ot.nkeys import sender_keys
from privquant.protocols.preprocessing.ot import nofn
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER, Party


# ------------------------------------------------------------------------------ public stages
@dataclass(frozen=True)
class Cmp:
    """``m`` comparisons ``[d >= 0]`` of differences that fit ``ell`` bits signed (packed:
    ``ell = L``, never 0; all pairs: ``ell = Ld``)."""

    m: int
    ell: int


@dataclass(frozen=True)
class Sel:
    """One round of COT products: a selection polynomial (:mod:`.select`)."""

    spec: select.SelSpec


@dataclass(frozen=True)
class Eq:
    """``rank``: open ``b + r`` (``n`` ranks, ``w`` bits) to P0, then ``[b == j]`` for
    ``j < t`` by one 1-out-of-2^w OT lookup per rank with P1's ``r`` as the chosen index."""

    n: int
    w: int
    t: int


def _sel_poly(c) -> Poly:
    return Poly.var("m") * (Poly.const(c) - Poly.arith("R"))


def _group(k: int, st: Cmp) -> circuit.OtGroup:
    return circuit.OtGroup(st.m, 0, (st.ell - 1,), k=k)


def _layer_spec(m: int, ls: int) -> select.SelSpec:
    return select.SelSpec.of(_sel_poly(torch.zeros(1, dtype=torch.int64)).reduced(ls), ls, m)


def _rank_fin(classes: int, lo: int) -> Poly:
    fin = Poly()
    for i in range(1, classes):
        fin = fin + Poly.const(i) * Poly.var(f"e{i:02d}")
    return fin.reduced(lo)


def pair_ring(sig: ArgmaxSig) -> int:
    """Ring of the all-pairs comparisons (``flat``, ``rank``): ``[p_i > p_j] = [x_i >= x_j]``
    for ``i < j``, so the unpacked differences in ``Z_2^Ld`` suffice (``s`` bits fewer per
    comparison; ``Ld >= 2`` by :func:`~privquant.protocols.primitives.ring.signed_bits`)."""
    return sig.ell_diff


def plans(sig: ArgmaxSig) -> list[str]:
    """The plans that serve this signature (as the dealer protocol's)."""
    out = ["network"]
    if sig.k == 1 and 3 <= sig.classes <= FLAT_MAX_CLASSES:
        out.append("flat")
    if 3 <= sig.classes <= RANK_MAX_CLASSES:
        out.append("rank")
    return out


def stages(sig: ArgmaxSig, plan: str) -> list:
    """The public stages of ``plan`` in online order (empty for ``n = 0`` or ``C = 1``)."""
    L, n, C, lo = sig.ell, sig.n, sig.classes, sig.ell_out
    if n == 0 or C == 1:
        return []
    if plan == "network":
        out = []
        for lv, layer in enumerate(sig.net.layers):
            m = n * len(layer)
            out += [Cmp(m, L), Sel(_layer_spec(m, sig.layer_ring(lv)))]
        return out
    pairs = len(flat_plan(C).pairs)
    if plan == "flat":
        f = flat_plan(C)
        mid, fin = _flat_polys(f)
        out = [Cmp(n * pairs, pair_ring(sig))]
        if mid is not None:
            out.append(Sel(select.SelSpec.of(mid.reduced(1), 1, n * (C - 1) * f.groups)))
        return [*out, Sel(select.SelSpec.of(fin.reduced(lo), lo, n))]
    w = sig.rank_ell
    return [
        Cmp(n * pairs, pair_ring(sig)),
        Sel(select.SelSpec.of(Poly.var("t"), w, n * pairs)),
        Eq(n * C, w, sig.k),
        Sel(select.SelSpec.of(_rank_fin(C, lo), lo, n * sig.k)),
    ]


def _stage_cost(k: int, st) -> tuple[int, int, list[str]]:
    """``(online bits, offline bits, online steps)`` of one stage."""
    if isinstance(st, Cmp):
        g = _group(k, st).cost()
        steps = [SEND10, SEND01] + [EXCHANGE] * _group(k, st).layout.depth
        return st.m * st.ell + g.online_bits, g.offline_bits, steps
    if isinstance(st, Sel):
        c = st.spec.cost(k)
        return c.online_bits, c.offline_bits, [EXCHANGE] if st.spec.cots else []
    c = nofn.cost(k, st.n, st.w, chosen=True)
    return st.n * (st.w + (1 << st.w) * st.t), c.offline_bits, [SEND10, SEND01]


def plan_cost(k: int, sig: ArgmaxSig, plan: str) -> OtCost:
    on = off = 0
    steps: list[str] = []
    for st in stages(sig, plan):
        a, b, s = _stage_cost(k, st)
        on, off, steps = on + a, off + b, steps + s
    return OtCost(
        online_bits=on,
        offline_bits=off,
        online_rounds=lamport_depth(steps),
        offline_rounds=int(off > 0),
    )


def choose(k: int, sig: ArgmaxSig) -> str:
    """``sig.force`` if it serves, else the plan with fewer online rounds, then fewer bits."""
    _ = sig.ell  # the dealer signature's checks (ranges, rings, classes)
    cand = plans(sig)
    if sig.force is not None:
        if sig.force not in cand:
            raise PrivQuantError(f"argmax plan {sig.force!r} is not one of {cand} here")
        return sig.force

    def key(plan):
        c = plan_cost(k, sig, plan)
        return (c.online_rounds, c.online_bits + c.offline_bits)

    return min(cand, key=key)


# ------------------------------------------------------------------------------ the protocol
@dataclass
class CmpPre:
    r: torch.Tensor | None  # P1's mask (m,) in Z_2^L; None at P0
    groups: list


@dataclass
class EqPre:
    r: torch.Tensor | None  # P1's rank masks (n,) in Z_2^w (the chosen OT indices)
    leaf: object  # NofNSend (P0) | NofNRecv (P1)
    keys: np.ndarray | None  # P0: the keys R_j truncated to t bits


class OtArgmax(OtProtocol):
    """Secure argmax / top-k without a dealer (see the module docstring)."""

    kind = "argmax"

    def plan(self, sig: ArgmaxSig) -> str:
        return choose(self.k, sig)

    def full_cost(self, sig: ArgmaxSig) -> OtCost:
        return plan_cost(self.k, sig, self.plan(sig))

    def online_steps(self, sig: ArgmaxSig) -> list[str]:
        out: list[str] = []
        for st in stages(sig, self.plan(sig)):
            out += _stage_cost(self.k, st)[2]
        return out

    # -- offline: every stage's OTs in one batch
    def offline(self, corr, sig: ArgmaxSig, state=None):
        rank = corr.role
        sts = stages(sig, self.plan(sig))
        b = Batch()
        slots = []
        for st in sts:
            r = None
            if isinstance(st, Cmp):
                r = private_ring((st.m,), st.ell) if rank == CLIENT else None
                masks = [r.numpy()] if r is not None else None
                slots.append((r, b.add(circuit.requests([_group(self.k, st)], rank, masks))))
            elif isinstance(st, Sel):
                slots.append((None, b.add(cotprod.requests(st.spec.cots))))
            else:
                r = private_ring((st.n,), st.w) if rank == CLIENT else None
                idx = r.numpy() if r is not None else None
                slots.append((r, b.add([nofn.request(SERVER, st.n, st.w, idx, chosen=True)])))
        if not sts:
            return []
        res = b.run(session_of(corr, self.k), "ot.am")
        pres = []
        for st, (r, sl) in zip(sts, slots):
            if isinstance(st, Cmp):
                pres.append(CmpPre(r, circuit.build([_group(self.k, st)], rank, res[sl])))
            elif isinstance(st, Sel):
                pres.append(res[sl])
            else:
                leaf = nofn.wrap(rank, SERVER, st.w, res[sl][0])
                keys = None
                if isinstance(leaf, nofn.NofNSend):
                    keys = sender_keys(leaf, st.t)
                    keys = keys.astype(np.uint8) if st.t <= 8 else keys
                else:
                    leaf.key(st.t)
                pres.append(EqPre(r, leaf, keys))
        return pres

    # -- online
    def online(self, party: Party, sig: ArgmaxSig, pre, x: torch.Tensor) -> torch.Tensor:
        C, L, s = sig.classes, sig.ell, sig.shift
        plan = self.plan(sig)
        if tuple(x.shape) != (sig.n, C):
            raise PrivQuantError(f"argmax: share has shape {tuple(x.shape)}, expected {(sig.n, C)}")
        sts = stages(sig, plan)
        if len(pre) != len(sts):
            raise PrivQuantError("argmax: the preprocessing does not match the signature")
        if not sts:  # one class (index 0) or no sample: nothing to compute
            return torch.zeros((sig.n, sig.k), dtype=torch.int64)
        v = ring.reduce(x, sig.ell_diff)
        if plan != "network":  # the pairs compare the logits themselves (:func:`pair_ring`)
            return (self._flat if plan == "flat" else self._rank)(party, sig, sts, pre, v)
        w = ring.reduce(v << s, L)  # index packing
        if party.rank == SERVER:
            w = ring.reduce(w + torch.arange(C - 1, -1, -1, dtype=torch.int64), L)
        return self._network(party, sig, sts, pre, w)

    def _compare(self, party: Party, st: Cmp, p: CmpPre, d: torch.Tensor, tag: str):
        """XOR shares (uint8 (m,)) of ``[d >= 0]`` for shares ``d`` in ``Z_2^L`` of differences
        that fit ``L`` bits signed (``[d > 0]`` for the non-zero packed ones), and this party's
        side of ``c = d + r``: P0 ``c``, P1 ``r`` (numpy int64)."""
        L, m = st.ell, st.m
        if party.rank == CLIENT:
            party.send(SERVER, ring.reduce(d + p.r, L), L, f"{tag}.open")
            lt = circuit.online(party, p.groups, [None], f"{tag}.cmp")[0][0]
            rv = p.r.numpy()
            return ((rv >> (L - 1)) & 1).astype(np.uint8) ^ lt, rv
        c = ring.reduce(d + party.recv(CLIENT, (m,), L, f"{tag}.open"), L).numpy()
        lt = circuit.online(party, p.groups, [(c, [c])], f"{tag}.cmp")[0][0]
        return (1 ^ ((c >> (L - 1)) & 1)).astype(np.uint8) ^ lt, c

    def _network(self, party, sig, sts, pre, w):
        s, me = sig.shift, party.rank
        for lv, layer in enumerate(sig.net.layers):
            cst, sst = sts[2 * lv], sts[2 * lv + 1]
            tag = f"am{lv}"
            hi = torch.tensor([cp[0] for cp in layer], dtype=torch.long)
            lo = torch.tensor([cp[1] for cp in layer], dtype=torch.long)
            a, b = w[:, hi], w[:, lo]
            d = ring.reduce(a - b, cst.ell).reshape(-1)
            t, mine = self._compare(party, cst, pre[2 * lv], d, tag)
            ls = sst.spec.ell
            c = torch.from_numpy(mine) if me == SERVER else torch.zeros(cst.m, dtype=torch.int64)
            r_val = mine if me == CLIENT else None
            poly = _sel_poly(c).reduced(ls)
            u = select.online(party, sst.spec, pre[2 * lv + 1], poly, {"m": t}, r_val, f"{tag}.sel")
            u = torch.from_numpy(u).reshape(a.shape)
            w = w.clone()
            w[:, hi] = ring.reduce(b + u, ls)  # max (the identity holds mod 2^Ls)
            w[:, lo] = ring.reduce(a - u, ls)  # min
        idx = -ring.reduce(w[:, list(sig.net.outputs)], s)
        if me == SERVER:
            idx = idx + (sig.classes - 1)
        return ring.reduce(idx, sig.ell_out)

    def _pair_bits(self, party, sig, st: Cmp, p: CmpPre, w, tag: str) -> np.ndarray:
        """XOR shares (n, P) of ``t_ij = [p_i > p_j]`` for every pair ``i < j`` (``w``: the
        packed values, or the logits in ``Z_2^Ld``: ``[x_i - x_j >= 0]``, the same bit)."""
        f = flat_plan(sig.classes)
        ii = torch.tensor([i for i, _ in f.pairs], dtype=torch.long)
        jj = torch.tensor([j for _, j in f.pairs], dtype=torch.long)
        d = ring.reduce(w[:, ii] - w[:, jj], st.ell).reshape(-1)
        t, _mine = self._compare(party, st, p, d, tag)
        return t.reshape(sig.n, len(f.pairs))

    def _flat(self, party, sig, sts, pre, w):
        f, n, mine = flat_plan(sig.classes), sig.n, int(party.rank == SERVER)
        t = self._pair_bits(party, sig, sts[0], pre[0], w, "amf")
        t = np.concatenate([t, np.zeros((n, 1), dtype=np.uint8)], axis=1)
        q = np.array([[pq for pq, _ in win] for win in f.wins], dtype=np.int64)
        neg = np.array([[ng if pq >= 0 else 1 for pq, ng in win] for win in f.wins],
                       dtype=np.uint8)  # fmt: skip
        y = t[:, q] ^ (neg * mine)  # (n, C-1, G*S): win bits; padding = the constant 1
        mid, fin = _flat_polys(f)
        if mid is not None:
            y = y.reshape(n, f.classes - 1, f.groups, f.size)
            bits = {f"x{j}": y[..., j].reshape(-1) for j in range(f.size)}
            a = select.online(party, sts[1].spec, pre[1], mid.reduced(1), bits, tag="amf.and")
            y = (a & 1).astype(np.uint8).reshape(n, f.classes - 1, f.groups)
        bits = {
            f"w{i}.{g:02d}": y[:, i - 1, g]
            for i in range(1, f.classes)
            for g in range(f.final_vars)
        }
        fin = fin.reduced(sig.ell_out)
        idx = select.online(party, sts[-1].spec, pre[-1], fin, bits, tag="amf.index")
        return torch.from_numpy(idx).reshape(n, 1)

    def _rank(self, party, sig, sts, pre, w):
        f, n, C, me = flat_plan(sig.classes), sig.n, sig.classes, party.rank
        cst, b2a, eq, fst = sts
        t = self._pair_bits(party, sig, cst, pre[0], w, "amr")
        ta = select.online(party, b2a.spec, pre[1], Poly.var("t"), {"t": t}, tag="amr.b2a")
        ta = torch.from_numpy(ta).reshape(n, len(f.pairs))
        ii = torch.tensor([i for i, _ in f.pairs], dtype=torch.long)
        jj = torch.tensor([j for _, j in f.pairs], dtype=torch.long)
        # rank b_i = #{j : p_j > p_i} = sum_(j<i) t_ji + sum_(j>i) (1 - t_ij)
        b = torch.zeros((n, C), dtype=torch.int64)
        b.index_add_(1, jj, ta)
        b.index_add_(1, ii, -ta)
        if me == SERVER:
            b = b + torch.arange(C - 1, -1, -1, dtype=torch.int64)
        b = ring.reduce(b.reshape(-1), eq.w)
        e = self._equal(party, eq, pre[2], b, "amr.eq")  # (t, n*C) XOR shares
        e = e.reshape(sig.k, n, C)
        bits = {f"e{i:02d}": e[:, :, i].transpose(1, 0).reshape(-1) for i in range(1, C)}
        fin = _rank_fin(C, sig.ell_out)
        idx = select.online(party, fst.spec, pre[3], fin, bits, tag="amr.index")
        return torch.from_numpy(idx).reshape(n, sig.k)

    def _equal(self, party, st: Eq, p: EqPre, b: torch.Tensor, tag: str) -> np.ndarray:
        """XOR shares (uint8 (t, n)) of ``[b == j]``, ``j < t``, for shares ``b`` in
        ``Z_2^w``: P1 opens ``c = b + r`` to P0, who sends the table
        ``T(v) = bits_j [(c - j) mod 2^w == v]`` through the OTs P1 indexed by ``r``."""
        W, n, t = 1 << st.w, st.n, st.t
        if party.rank == CLIENT:
            party.send(SERVER, ring.reduce(b + p.r, st.w), st.w, f"{tag}.open")
            v = circuit._recv_entry(party, p.leaf, t, f"{tag}.tab")
        else:
            c = ring.reduce(b + party.recv(CLIENT, (n,), st.w, f"{tag}.open"), st.w).numpy()
            dt = np.uint8 if t <= 8 else np.uint64
            tab = np.zeros((n, W), dtype=dt)
            rows = np.arange(n)
            for j in range(t):
                tab[rows, (c - j) & (W - 1)] |= dt(1 << j)
            v = circuit._send_table(party, p.keys, tab, t, f"{tag}.tab")
        vv = v.view(np.uint64)
        return np.stack([((vv >> np.uint64(j)) & np.uint64(1)).astype(np.uint8) for j in range(t)])


OT_ARGMAX = OtArgmax()

__all__ = ["OT_ARGMAX", "OtArgmax", "choose", "pair_ring", "plan_cost", "plans", "stages"]
