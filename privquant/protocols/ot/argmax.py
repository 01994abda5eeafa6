"""Secure argmax / top-k without a dealer: the client learns only the indices of the ``k``
largest logits; the same signature (:class:`~privquant.protocols.argmax.ArgmaxSig`), output
(shares in ``Z_2^Lo`` of the ``k`` indices, largest first, equal logits by lower index first)
and public comparator network as the dealer protocol's ``network`` plan
(:mod:`privquant.protocols.argmax`).

Source: the tournament / comparator-network argmax of secure inference (e.g. SecureML, Delphi,
CrypTFlow2's ArgMax), each comparator the dealer-free maximum of :mod:`.maxpool`: SCI's
millionaire (:mod:`.circuit`) and COT multiplexer (:mod:`.select`, Rathee et al., CCS 2020),
on index-packed values so that the winner carries its own index (no index selection, no tie
comparison).

1. **Index packing, local** (as the dealer protocol): with ``s = Lo`` and ``L = Ld + s``, each
   party forms ``p_i = x_i * 2^s + (C - 1 - i)`` in ``Z_2^L`` (P0 adds the public
   ``C - 1 - i``). The ``p_i`` are distinct, their order is the output order, every difference
   fits ``L`` bits signed, and ``p mod 2^s = C - 1 - index``.
2. **Network** (:func:`~privquant.protocols.argmax_plans.network`; for ``k = 1`` the tournament
   of ``C - 1`` comparators in ``ceil(log2 C)`` layers). Per layer, all its ``n_l`` comparators
   ``(hi, lo)`` over all ``n`` samples at once (``m = n * n_l`` pairs ``a = p_hi``,
   ``b = p_lo``, ``d = a - b != 0``):

   a. offline: P1 draws ``r`` uniform in ``Z_2^L`` (CSPRNG, its own); the leaf OTs (P1's digits
      of ``r`` chosen) and AND triples of one ``(L-1)``-bit comparison per pair, and the random
      OTs of the two COT products of the selection -- every layer's OTs in ONE offline batch;
   b. P1 sends ``d1 + r``; P0 learns ``c = d + r mod 2^L`` (1 message);
   c. ``t = [d > 0] = 1 xor msb(c) xor r_(L-1) xor [c mod 2^(L-1) < r mod 2^(L-1)]`` as XOR
      shares (P0 holds ``1 xor msb(c)``, P1 ``r_(L-1)``; the comparison: 1 + D rounds);
   d. ``u = t*(a - b) = t*c - t*r`` in the layer's ring ``Ls``: one COT product with P1
      choosing (P0's value ``c``) and one with P0 choosing (P1's value ``r``), 1 exchange;
   e. locally ``max = b + u`` on wire ``hi``, ``min = a - u`` on wire ``lo``.

   ``Ls = Lo`` when every used output of the layer is a network output (the low ``s`` bits of a
   packed value only need the identity modulo ``2^s``), else ``L``.
3. ``index = (C - 1) - (p mod 2^s)`` at the ``k`` output wires, locally, in ``Z_2^Lo``; the
   output op then opens these ``k`` values to the client alone.

Cost (``k_ot`` the SoftSpokenOT parameter; per layer ``l``: ``m_l = n * n_l`` pairs, ``cmp_l``
the :mod:`.circuit` cost of ``m_l`` one-job ``(L-1)``-bit comparisons, depth ``D``)::

    online  = sum_l [ m_l*L + cmp_l.online + m_l*(Ls_l + 1) * 2 ]
    offline = sum_l [ cmp_l.offline + 2*m_l*(128/k_ot - 1) ],  1 offline round (one batch)
    rounds  = lamport_depth of per layer [P1->P0, P0->P1 (leaves), D exchanges, 1 exchange]

(the P1 -> P0 opening of a layer follows the previous layer's exchange at once, so consecutive
layers overlap by the Lamport model of :func:`.common.lamport_depth`). ``C = 1``: nothing.

Security (semi-honest, as SCI): P0 sees ``c = d + r`` with ``r`` uniform and P1's; the leaf
tables reach P1 masked by OT keys it lacks and P0's random output shares; the triples' openings
and the COT messages are masked by random OT keys and choice bits. The client's online view is
thus uniform apart from the final opening of the ``k`` indices (tested with the client's
randomness fixed: ``tests/protocols/otmode/test_ot_argmax.py``).
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
    """``m`` comparisons ``[d > 0]`` of packed differences in ``Z_2^L`` (steps b, c)."""

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
