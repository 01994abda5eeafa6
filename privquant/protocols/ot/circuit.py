"""Comparisons of P0's private values with P1's private mask, without a dealer: SCI-style
millionaire leaves by 1-out-of-2^m OT with P1's digit fixed offline, and the combine tree of
:mod:`privquant.protocols.compare` on AND triples made by OT.

Source: CrypTFlow2 / EzPC SCI's millionaire protocol (Rathee et al., CCS 2020, section 3.1):
digit leaves by 1-out-of-2^m OT lookups, a log-depth ``(lt, eq)`` combine tree of ANDs; the
"shared low block, several high jobs, joined at the end" arrangement of the dealer circuit
(:mod:`privquant.protocols.compare`, after Rabbit, Makri et al. 2021); AND triples from random
OT (ALSZ13, :mod:`privquant.protocols.preprocessing.ot.triples`).

Setting. Every group has one mask ``r`` known to P1 alone (drawn by P1 before the inputs exist)
and public *structure*; P0 holds, online, the values ``C`` compared with it (derived from an
opening ``c = x + r`` that only P0 sees). A group is an :class:`OtGroup`: a low block of ``low``
bits (positions ``0..low-1``, the same P0 bits ``c_low`` for every job) and per job ``j`` a high
block of ``widths[j]`` bits (positions ``low..low+widths[j]-1`` of ``C_j``); the result per job is
XOR shares of ``[C_j mod 2^(low+w_j) < r mod 2^(low+w_j)]`` and, if ``want_low``, the low
block's ``[c_low mod 2^low < r mod 2^low]`` (the borrow).

Steps (``m`` = digit size, chosen per group shape for the fewest bits, then rounds):

1. Offline: per element and digit position of ``r`` (low block and high region cut into
   ``m``-bit digits), one 1-out-of-2^s OT (:mod:`~privquant.protocols.preprocessing.ot.nofn`,
   P0 the sender) whose index P1 fixes now: its digit of ``r`` (chosen-choice OTs, ``128/k``
   bits per OT). Every job reads the same digit of ``r``, so one OT serves all of them.
   Plus the AND triples of the tree (two random OTs each, any width).
2. Online, leaves (P0 -> P1, 1 round): for each position P0 sends the table
   ``T(j) = concat over users (lt = [v < j], eq = [v == j])`` masked by the OT keys and its own
   random output share (the lookup of :mod:`~privquant.protocols.preprocessing.ot.lut` with a
   known index, sent as one bit stream per digit class); ``v`` is the user's digit of its
   ``C``. ``eq`` is dropped at leaf 0 of a tree whose root ``eq`` is unused (the low tree; a
   job tree when ``low = 0``).
3. Tree (:class:`~privquant.protocols.compare.TreePlan`): ``(lt, eq) = (lt_H xor eq_H*lt_L,
   eq_H*eq_L)``; per pair one triple with the shared operand ``eq_H`` and width 1 (``lt`` only)
   or 2. The joins ``lt_j xor= eq_j * b`` (``b`` the low root) share the operand ``b``: one
   triple of width ``J'`` (jobs with ``w_j > 0``). All ANDs of a level, over trees and groups,
   in one exchange.

Cost (per group; ``S`` = digit bits ``low + max(widths)``, ``tab`` = sum over positions of
``2^s * t_pos`` (``t_pos`` = table bits per entry), ``T`` triples of widths ``w_i``, ``D`` the
depth)::

    offline = n * ((128/k) * S + 2*(128/k - 1) * T)        bits, 1 round (batched)
    online  = n * (tab + 2 * sum_i (1 + w_i))              bits
    rounds  = 1 + max over groups of D
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.compare import TreePlan, digit_sizes
from privquant.protocols.ot.common import DEFAULT_K, chosen_bits, rot_bits
from privquant.protocols.ot.nkeys import sender_keys
from privquant.protocols.preprocessing.ot import nofn, triples
from privquant.protocols.preprocessing.ot.cost import OtCost
from privquant.protocols.preprocessing.ot.extension import OtRequest
from privquant.protocols.transport.channel import CLIENT, SERVER, Party

DIGITS = tuple(range(1, nofn.MAX_M + 1))


@dataclass(frozen=True)
class Layout:
    """Per-element structure of one group (public, independent of ``n``).

    ``positions[p] = (start, s, entries)`` with ``entries`` a tuple of ``(tree, leaf, s_eff, t)``:
    tree 0 is the low tree, tree ``j + 1`` job ``j``; ``s_eff`` the digit's width for that tree,
    ``t`` its table bits (1: ``lt`` only, 2: ``lt, eq``). ``levels[l]`` lists the triples of global
    level ``l + 1`` as ``(tree, pair, with_eq)``, and ``("join", J')`` for the joins."""

    m: int
    positions: tuple
    trees: tuple
    levels: tuple
    depth: int

    @cached_property
    def ot_bits(self) -> int:
        return sum(s for _start, s, _e in self.positions)

    @cached_property
    def table_bits(self) -> int:
        return sum((1 << s) * sum(e[3] for e in entries) for _st, s, entries in self.positions)

    @cached_property
    def widths(self) -> tuple[int, ...]:
        """Width of every triple, in the order they are consumed."""
        out = []
        for lv in self.levels:
            for item in lv:
                out.append(item[1] if item[0] == "join" else 1 + int(item[2]))
        return tuple(out)


def _tree(width: int, m: int, root_eq: bool) -> TreePlan | None:
    return TreePlan(-(-width // m), root_eq) if width > 0 else None


def _leaf_t(tree: TreePlan, leaf: int) -> int:
    """Table bits of a leaf: every node but node 0 feeds a combine as ``eq_H`` or needs ``eq``
    for its parent; node 0 needs ``eq`` only if the root's ``eq`` is used."""
    return 2 if (leaf > 0 or tree.root_eq) else 1


@functools.cache
def layout(low: int, widths: tuple[int, ...], m: int) -> Layout:
    trees = (_tree(low, m, False), *(_tree(w, m, low > 0) for w in widths))
    high = max(widths, default=0)
    positions = []
    for i, s in enumerate(digit_sizes(low, m)):
        positions.append((i * m, s, ((0, i, s, _leaf_t(trees[0], i)),)))
    for i, s in enumerate(digit_sizes(high, m)):
        entries = []
        for j, w in enumerate(widths):
            t = trees[j + 1]
            if t is not None and i < t.m:
                s_eff = min(m, w - i * m)
                entries.append((j + 1, i, s_eff, _leaf_t(t, i)))
        positions.append((low + i * m, s, tuple(entries)))
    joins = sum(1 for w in widths if w > 0) if low > 0 else 0
    tdepth = max((t.depth for t in trees if t is not None), default=0)
    depth = tdepth + (1 if joins else 0)
    levels = []
    for lv in range(depth):
        items = []
        for ti, t in enumerate(trees):
            if t is not None and lv < t.depth:
                pairs = t.sizes[lv] // 2
                eqp = set(t.eq_parents[lv])
                items += [(ti, p, p in eqp) for p in range(pairs)]
        if joins and lv == depth - 1:
            items.append(("join", joins))
        levels.append(tuple(items))
    return Layout(m, tuple(positions), trees, tuple(levels), depth)


def unit_cost(k: int, lay: Layout) -> OtCost:
    """Cost of one element (``n = 1``) of a group with this layout."""
    nt = len(lay.widths)
    return OtCost(
        online_bits=lay.table_bits + 2 * sum(1 + w for w in lay.widths),
        offline_bits=chosen_bits(k) * lay.ot_bits + 2 * rot_bits(k) * nt,
        online_rounds=1 + lay.depth,
        offline_rounds=1,
    )


@functools.cache
def best_digit(k: int, low: int, widths: tuple[int, ...]) -> int:
    def key(m):
        c = unit_cost(k, layout(low, widths, m))
        return (c.online_bits + c.offline_bits, c.online_rounds, -m)

    return min(DIGITS, key=key)


@dataclass(frozen=True)
class OtGroup:
    """Comparisons of P0's values with one P1 mask (see the module docstring)."""

    n: int
    low: int
    widths: tuple[int, ...]
    want_low: bool = False
    k: int = DEFAULT_K
    digit: int = 0

    def __post_init__(self):
        if self.low < 0 or any(w < 0 for w in self.widths):
            raise ValueError("block widths must be >= 0")
        if self.low == 0 and (not self.widths or any(w == 0 for w in self.widths)):
            raise ValueError("a comparison job needs at least one bit")
        if self.want_low and self.low == 0:
            raise ValueError("want_low needs a low block")
        if self.digit and self.digit not in DIGITS:
            raise ValueError(f"digit size must be one of {DIGITS}, got {self.digit}")
        if self.low + max(self.widths, default=0) > 62:
            raise ValueError("comparisons are limited to 62 bits")

    @cached_property
    def m(self) -> int:
        return self.digit or best_digit(self.k, self.low, self.widths)

    @property
    def layout(self) -> Layout:
        return layout(self.low, self.widths, self.m)

    @property
    def nbits(self) -> int:
        return self.low + max(self.widths, default=0)

    def cost(self) -> OtCost:
        if self.n == 0:
            return OtCost()
        u = unit_cost(self.k, self.layout)
        return OtCost(
            online_bits=self.n * u.online_bits,
            offline_bits=self.n * u.offline_bits,
            online_rounds=u.online_rounds,
            offline_rounds=1,
        )

    def classes(self) -> dict[tuple[int, int], list[int]]:
        """Positions grouped by (digit size, table bits): one OT request per class."""
        out: dict[tuple[int, int], list[int]] = {}
        for p, (_start, s, entries) in enumerate(self.layout.positions):
            out.setdefault((s, sum(e[3] for e in entries)), []).append(p)
        return out

    @property
    def n_triples(self) -> int:
        return self.n * len(self.layout.widths)

    @property
    def triple_width(self) -> int:
        return max(self.layout.widths, default=1)


def cost(groups) -> OtCost:
    """Total of several groups run together (bits add; rounds: the deepest group)."""
    out = OtCost()
    for g in groups:
        out = out.alongside(g.cost())
    return out


# ------------------------------------------------------------------------------ offline
@dataclass
class GroupPre:
    group: OtGroup
    leaves: dict = field(default_factory=dict)  # class -> NofNSend | NofNRecv
    keys: dict = field(default_factory=dict)  # class -> P0's keys R_j, truncated to t bits
    triples: triples.Triples | None = None


def requests(groups, rank: int, masks=None) -> list[OtRequest]:
    """OT requests of the groups (P1 passes its masks ``masks[g]`` (n,) int64, P0 None)."""
    reqs: list[OtRequest] = []
    for gi, g in enumerate(groups):
        if g.n == 0:
            continue
        for (s, _t), pos in g.classes().items():
            index = None
            if rank == CLIENT:
                r = np.asarray(masks[gi], dtype=np.int64).reshape(-1)
                starts = [g.layout.positions[p][0] for p in pos]
                index = np.concatenate([(r >> st) & ((1 << s) - 1) for st in starts])
            reqs.append(nofn.request(SERVER, g.n * len(pos), s, index, chosen=True))
        reqs += triples.requests(g.n_triples)
    return reqs


def build(groups, rank: int, results: list) -> list[GroupPre]:
    """Turn the results of :func:`requests` (same order) into per-group material."""
    out, i = [], 0
    for g in groups:
        pre = GroupPre(g)
        if g.n == 0:
            out.append(pre)
            continue
        for (s, t), _pos in g.classes().items():
            leaf = nofn.wrap(rank, SERVER, s, results[i])
            if isinstance(leaf, nofn.NofNSend):  # input-independent hashing: do it now
                keys = sender_keys(leaf, t)
                pre.keys[(s, t)] = keys.astype(np.uint8) if t <= 8 else keys
            else:
                leaf.key(t)
            pre.leaves[(s, t)] = leaf
            i += 1
        pre.triples = triples.from_rots(rank, results[i], results[i + 1], g.triple_width)
        i += 2
        out.append(pre)
    return out


# ------------------------------------------------------------------------------ online
def _digit(v: np.ndarray, start: int, s: int) -> np.ndarray:
    return (v >> start) & ((1 << s) - 1)


@functools.cache
def _leaf_lut(s_eff: int, s: int, t: int) -> np.ndarray:
    """(2^s_eff, 2^s) uint8: ``[v < j'] | [v == j'] << 1`` (``eq`` only if ``t = 2``) with ``j'``
    the low ``s_eff`` bits of the index ``j``."""
    v = np.arange(1 << s_eff)[:, None]
    j = (np.arange(1 << s) & ((1 << s_eff) - 1))[None, :]
    out = (v < j).astype(np.uint8)
    if t == 2:
        out |= (v == j).astype(np.uint8) << 1
    return out


def _tables(g: OtGroup, c_low: np.ndarray, c_jobs: list[np.ndarray], pos: list[int], t: int):
    """P0's tables (len(pos) * n, 2^s) for one class of positions (uint8 if ``t <= 8``)."""
    dt = np.uint8 if t <= 8 else np.uint64
    rows = []
    for p in pos:
        start, s, entries = g.layout.positions[p]
        tab = np.zeros((g.n, 1 << s), dtype=dt)
        off = 0
        for tree, _leaf, s_eff, te in entries:
            c = c_low if tree == 0 else c_jobs[tree - 1]
            part = _leaf_lut(s_eff, s, te)[_digit(c, start, s_eff)]
            tab |= part.astype(dt) << dt(off)
            off += te
        rows.append(tab)
    return np.concatenate(rows)


def _send_table(party: Party, keys: np.ndarray, tab: np.ndarray, t: int, tag: str):
    """P0: send ``T'_j = T(j) xor R_j xor rho`` for every entry ``j`` (P1's index is fixed, so
    no rotation), as a bit stream of ``N * 2^s * t`` bits; return the output share ``rho``.
    ``keys``: the OTs' keys ``R_j`` truncated to ``t`` bits (uint8 if ``t <= 8``)."""
    n = tab.shape[0]
    rho = np.frombuffer(secrets.token_bytes(8 * n), dtype=np.uint64).copy()
    rho &= np.uint64((1 << t) - 1)
    if t <= 8:
        masked = tab ^ keys ^ rho.astype(np.uint8)[:, None]
        bits = np.unpackbits(masked[:, :, None], axis=2, count=t, bitorder="little")
    else:
        masked = tab ^ keys ^ rho[:, None]
        bits = ((masked[:, :, None] >> np.arange(t, dtype=np.uint64)) & np.uint64(1)).astype(
            np.uint8
        )
    party.send_bits(party.peer, torch.from_numpy(bits.reshape(-1)), tag)
    return rho.view(np.int64)


def _recv_entry(party: Party, leaf: nofn.NofNRecv, t: int, tag: str):
    """P1: receive the masked tables and unmask its entry: ``T'_i xor R_i = T(i) xor rho``."""
    n, big = len(leaf), 1 << leaf.m
    bits = party.recv_bits(party.peer, (n * big * t,), tag).numpy().reshape(n, big, t)
    mine = bits[np.arange(n), leaf.index]
    if t <= 8:
        v = np.packbits(mine, axis=1, bitorder="little")[:, 0].astype(np.uint64)
    else:
        v = (mine.astype(np.uint64) << np.arange(t, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    return (v ^ leaf.key(t)).view(np.int64)


def online(party: Party, pres: list[GroupPre], data, tag: str = "otc") -> list[list[np.ndarray]]:
    """Run all groups. ``data[g]``: at P0 ``(c_low, c_jobs)`` ((n,) int64 and one (n,) int64 per
    job), at P1 ignored (its masks were fixed offline). Returns per group the XOR shares (uint8
    (n,)) of each job's ``lt`` then, if ``want_low``, the low block's."""
    me = party.rank
    # 1. leaves: P0 sends every table (one message per class), P1 receives them
    leaf_bits: list[dict] = []
    for gi, pre in enumerate(pres):
        g = pre.group
        got = {}
        if g.n == 0:
            leaf_bits.append(got)
            continue
        if me == SERVER:
            c_low, c_jobs = data[gi]
            c_low = np.asarray(c_low, dtype=np.int64).reshape(-1)
            c_jobs = [np.asarray(c, dtype=np.int64).reshape(-1) for c in c_jobs]
            if c_low.size != g.n or any(c.size != g.n for c in c_jobs):
                raise PrivQuantError("comparison: P0's values have the wrong length")
        for cls, pos in g.classes().items():
            s, t = cls
            ctag = f"{tag}.{gi}.{s}.{t}"
            if me == SERVER:
                tab = _tables(g, c_low, c_jobs, pos, t)
                sh = _send_table(party, pre.keys[cls], tab, t, ctag)
            else:
                sh = _recv_entry(party, pre.leaves[cls], t, ctag)
            got[cls] = sh.reshape(len(pos), g.n)
        leaf_bits.append(got)
    # decode into per-tree (lt, eq) node arrays
    state: list[list[list[np.ndarray] | None]] = []
    for gi, pre in enumerate(pres):
        g = pre.group
        if g.n == 0:
            state.append([])
            continue
        lay = g.layout
        st: list[list[np.ndarray] | None] = [
            [np.zeros((t.m, g.n), np.uint8), np.zeros((t.m, g.n), np.uint8)]
            if t is not None
            else None
            for t in lay.trees
        ]
        for cls, pos in g.classes().items():
            v = leaf_bits[gi][cls]
            for a, p in enumerate(pos):
                off = 0
                for tree, leaf, _s_eff, t in lay.positions[p][2]:
                    st[tree][0][leaf] = (v[a] >> off) & 1
                    if t == 2:
                        st[tree][1][leaf] = (v[a] >> (off + 1)) & 1
                    off += t
        state.append(st)
    # 2. the trees and joins, one exchange per level
    depth = max((p.group.layout.depth for p in pres if p.group.n), default=0)
    used = [0] * len(pres)
    for lvl in range(depth):
        jobs = []  # (triples slice, x, y, callback)
        for gi, pre in enumerate(pres):
            g = pre.group
            if g.n == 0 or lvl >= g.layout.depth:
                continue
            n, st = g.n, state[gi]
            for item in g.layout.levels[lvl]:
                w = item[1] if item[0] == "join" else 1 + int(item[2])
                t0 = used[gi]
                used[gi] += n
                tri = pre.triples.take(t0, t0 + n)
                tri = triples.Triples(tri.a, tri.b[:, :w], tri.c[:, :w])
                if item[0] == "join":
                    b = st[0][0][0]
                    js = [j for j in range(1, len(st)) if st[j] is not None]
                    y = np.stack([st[j][1][0] for j in js], axis=1)
                    jobs.append((tri, b, y, ("join", gi, js)))
                else:
                    ti, p, with_eq = item
                    lt, eq = st[ti]
                    cols = [lt[2 * p]] + ([eq[2 * p]] if with_eq else [])
                    jobs.append((tri, eq[2 * p + 1], np.stack(cols, axis=1), ("pair", gi, item)))
        zs = triples.and_gates_many(
            party, [(t, x, y) for t, x, y, _ in jobs], tag=f"{tag}.and{lvl}"
        )
        # apply: new node p of a tree from pair p; odd last node moves up
        new: dict[tuple[int, int], dict] = {}
        for (_t, _x, _y, cb), z in zip(jobs, zs):
            kind, gi = cb[0], cb[1]
            st = state[gi]
            if kind == "join":
                for a, j in enumerate(cb[2]):
                    st[j][0] = st[j][0].copy()
                    st[j][0][0] = st[j][0][0] ^ z[:, a]
            else:
                ti, p, with_eq = cb[2]
                lt, eq = st[ti]
                d = new.setdefault((gi, ti), {})
                d[p] = (lt[2 * p + 1] ^ z[:, 0], z[:, 1] if with_eq else np.zeros_like(z[:, 0]))
        for (gi, ti), d in new.items():
            lt, eq = state[gi][ti]
            size = lt.shape[0]
            pairs = size // 2
            nl = [d[p][0] for p in range(pairs)]
            ne = [d[p][1] for p in range(pairs)]
            if size % 2:
                nl.append(lt[-1])
                ne.append(eq[-1])
            state[gi][ti] = [np.stack(nl), np.stack(ne)]
    out = []
    for pre, st in zip(pres, state):
        g = pre.group
        if g.n == 0:
            out.append([np.zeros(0, np.uint8)] * (len(g.widths) + int(g.want_low)))
            continue
        low_lt = st[0][0][0] if st[0] is not None else None
        res = [s[0][0] if s is not None else low_lt for s in st[1:]]
        if g.want_low:
            res.append(low_lt)
        out.append([np.ascontiguousarray(x, dtype=np.uint8) for x in res])
    return out
