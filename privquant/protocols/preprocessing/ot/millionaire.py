"""Millionaire comparison ``[x < y]`` (P0's private x, P1's private y, ell bits) and MSB, SCI-style.

Source: CrypTFlow2 / EzPC SCI (Rathee et al., CCS 2020, section 3.1, "F_MILL"): split both
inputs into m-bit digits, compare digits by 1-out-of-2^m OT lookups, combine the digit results by
a log-depth tree of ANDs on XOR shares.

Digits ``i = 0 .. q-1`` (low to high), ``q = ceil(ell/m)``; digit ``i`` has ``m_i = m`` bits except
the top one (``ell - (q-1)*m``). Steps:

1. leaves (:mod:`.lut`, P1 the index holder with ``y_i``, P0 the table holder):
   ``T_i(j) = [x_i < j] + 2*[x_i = j]`` (``t_i = 2`` bits), or only ``[x_i < j]`` (``t_0 = 1``)
   for the lowest digit (its ``eq`` is never needed); XOR shares of ``lt_i``, ``eq_i``.
2. tree: adjacent nodes (low L, high H) merge into ``lt = lt_H xor eq_H*lt_L`` and
   ``eq = eq_H*eq_L``; an odd node at the top of a level moves up unchanged. The node that holds
   digit 0 never needs ``eq`` (one AND, a width-1 triple); every other merge needs both ANDs,
   which share the operand ``eq_H`` (one width-2 triple, :mod:`.triples`). All ANDs of a level
   share one exchange.

Offline (one batch, 1 round): ``n*sum_i m_i`` random OTs P0 -> P1 for the leaves and
``n*(A1 + A2)`` random OT pairs for the triples (A1 width-1 and A2 width-2 ANDs per element).
Online: leaves ``n*sum_i (m_i + 2^{m_i}*t_i)`` bits in 2 rounds (P1 -> P0, P0 -> P1), then
``4*n*A1 + 6*n*A2`` bits in ``ceil(log2 q)`` rounds. :func:`cost` gives the exact totals and the
depth as measured (``2 + levels``; with ``q = 1`` just the lookup); :func:`best_m` picks the digit
size with the fewest total bits (offline + online).

MSB (:func:`msb_online`): for ``x = x0 + x1 mod 2^ell``, ``msb(x) = msb(x0) xor msb(x1) xor c``
with the carry ``c = [2^(ell-1) - 1 - x0' < x1']`` (``x'`` the low ``ell-1`` bits): one
millionaire on ``ell - 1`` bits, no extra message (:func:`msb_cost`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch

from privquant.protocols.preprocessing.ot import lut, nofn, triples
from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.preprocessing.ot.extension import OtSession, blocks
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import CLIENT, SERVER, Party

MAX_ELL = 62


@dataclass(frozen=True)
class Plan:
    """Digit widths (low to high) and, per tree level, the merges ``(low, high, both)``; ``both``
    says whether ``eq`` is needed (width-2 AND) or only ``lt`` (width-1)."""

    ell: int
    m: int
    widths: tuple[int, ...]
    levels: tuple[tuple[tuple[int, int, bool], ...], ...] = field(default=())

    @property
    def q(self) -> int:
        return len(self.widths)

    def table_bits(self, i: int) -> int:
        return 1 if i == 0 else 2

    @property
    def and1(self) -> int:
        return sum(1 for lv in self.levels for (_, _, both) in lv if not both)

    @property
    def and2(self) -> int:
        return sum(1 for lv in self.levels for (_, _, both) in lv if both)


@cache
def plan(ell: int, m: int) -> Plan:
    if not 1 <= ell <= MAX_ELL:
        raise OtError(f"millionaire: ell must be 1..{MAX_ELL}, got {ell}")
    m = min(nofn.check_m(m), ell)
    q = -(-ell // m)
    widths = tuple([m] * (q - 1) + [ell - (q - 1) * m])
    nodes = list(range(q))  # node ids; node 0 holds digit 0 at every level
    next_id = q
    levels = []
    while len(nodes) > 1:
        lv, up = [], []
        for j in range(0, len(nodes) - 1, 2):
            low, high = nodes[j], nodes[j + 1]
            lv.append((low, high, j != 0))
            up.append(next_id)
            next_id += 1
        if len(nodes) % 2:
            up.append(nodes[-1])
        levels.append(tuple(lv))
        nodes = up
    return Plan(ell, m, widths, tuple(levels))


def cost(k: int, n: int, ell: int, m: int | None = None) -> OtCost:
    """Exact cost of ``n`` comparisons of ``ell``-bit values with digit size ``m``."""
    m = best_m(k, ell) if m is None else m
    p = plan(ell, m)
    rot = blocks(k) - 1
    off_bits = rot * n * sum(p.widths) + 2 * rot * n * (p.and1 + p.and2)
    leaf_bits = n * sum(w + (1 << w) * p.table_bits(i) for i, w in enumerate(p.widths))
    and_bits = n * (4 * p.and1 + 6 * p.and2)
    rounds = 0 if n == 0 else 2 + len(p.levels)
    return OtCost(
        online_bits=leaf_bits + and_bits,
        offline_bits=off_bits,
        online_rounds=rounds,
        offline_rounds=1 if n else 0,
    )


@cache
def best_m(k: int, ell: int) -> int:
    """The digit size with the fewest offline + online bits (ties: fewer rounds)."""
    best = None
    for m in range(1, min(nofn.MAX_M, ell) + 1):
        c = cost(k, 1, ell, m)
        key = (c.online_bits + c.offline_bits, c.online_rounds, -m)
        if best is None or key < best[0]:
            best = (key, m)
    return best[1]


@dataclass
class Pre:
    """One party's offline material: leaf OTs per digit width group and the triples."""

    plan: Plan
    n: int
    leaves: dict[tuple[int, int], nofn.NofNSend | nofn.NofNRecv]
    triples: triples.Triples


def _groups(p: Plan) -> dict[tuple[int, int], list[int]]:
    """Digit indices grouped by (width, table bits): digit 0 alone (t = 1), then the others by
    width (at most two more groups)."""
    g: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(p.widths):
        g.setdefault((w, p.table_bits(i)), []).append(i)
    return g


def offline(session: OtSession, n: int, ell: int, m: int | None = None) -> Pre:
    """Both parties call it; :func:`cost` (offline part)."""
    m = best_m(session.k, ell) if m is None else m
    p = plan(ell, m)
    groups = _groups(p)
    reqs = [nofn.request(SERVER, n * len(ix), w) for (w, _t), ix in groups.items()]
    n_and = n * (p.and1 + p.and2)
    reqs += triples.requests(n_and)
    res = session.batch(reqs, tag="ot.mill")
    rank = session.party.rank
    leaves = {g: nofn.wrap(rank, SERVER, g[0], r) for g, r in zip(groups, res)}
    for (_w, t), leaf in leaves.items():  # the keys' hashes are input-independent: do them now
        if isinstance(leaf, nofn.NofNSend):
            leaf.keys(t)
        else:
            leaf.key(t)
    t = triples.from_rots(rank, res[-2], res[-1], 2)
    return Pre(p, n, leaves, t)


def _digits(v: np.ndarray, p: Plan, ix: list[int]) -> np.ndarray:
    """(len(ix)*n,) digit values, digit-major."""
    return np.concatenate([(v >> (p.m * i)) & ((1 << p.widths[i]) - 1) for i in ix])


def online(party: Party, pre: Pre, v: torch.Tensor | np.ndarray, tag: str = "ot.mill"):
    """XOR share (uint8 (n,)) of ``[x < y]``; P0 passes ``x``, P1 passes ``y`` (unsigned, ell
    bits, int64)."""
    p, n = pre.plan, pre.n
    v = np.asarray(v, dtype=np.int64).reshape(-1)
    if v.size != n or (n and (v.min() < 0 or v.max() >= 1 << p.ell)):
        raise OtError(f"millionaire: expected {n} values in [0, 2^{p.ell})")
    groups = _groups(p)
    lt: dict[int, np.ndarray] = {}
    eq: dict[int, np.ndarray] = {}
    # 1. leaves: all index messages first, then all tables
    outs: dict[tuple[int, int], np.ndarray] = {}
    if party.rank == CLIENT:
        for g, ix in groups.items():
            lut.index_send(party, pre.leaves[g], _digits(v, p, ix), tag=f"{tag}.{g[0]}.{g[1]}")
        for g in groups:
            outs[g] = lut.index_recv(party, pre.leaves[g], g[1], tag=f"{tag}.{g[0]}.{g[1]}")
    else:
        for g, ix in groups.items():
            xd = _digits(v, p, ix)[:, None]
            j = np.arange(1 << g[0])[None, :]
            table = (xd < j).astype(np.int64)
            if g[1] == 2:
                table |= (xd == j).astype(np.int64) << 1
            outs[g] = lut.table_online(
                party, pre.leaves[g], table, g[1], tag=f"{tag}.{g[0]}.{g[1]}"
            )
    lt: dict[int, np.ndarray] = {}
    eq: dict[int, np.ndarray] = {}
    for g, ix in groups.items():
        o = outs[g].reshape(len(ix), n)
        for a, i in enumerate(ix):
            lt[i] = (o[a] & 1).astype(np.uint8)
            eq[i] = ((o[a] >> 1) & 1).astype(np.uint8)
    # 2. the tree: every AND of a level in one exchange
    pos, nid = 0, p.q
    for lv in p.levels:
        one = [(a, lo, hi) for a, (lo, hi, both) in enumerate(lv) if not both]
        two = [(a, lo, hi) for a, (lo, hi, both) in enumerate(lv) if both]
        t1 = pre.triples.take(pos, pos + n * len(one))
        pos += n * len(one)
        t2 = pre.triples.take(pos, pos + n * len(two))
        pos += n * len(two)
        t1 = triples.Triples(t1.a, t1.b[:, :1], t1.c[:, :1])

        def cat(arrs, width):
            return np.concatenate(arrs) if arrs else np.zeros((0,) * width, np.uint8)

        g1 = (t1, cat([eq[hi] for _, _, hi in one], 1), cat([lt[lo] for _, lo, _ in one], 1))
        y2 = [np.stack([lt[lo], eq[lo]], axis=1) for _, lo, _ in two]
        g2 = (t2, cat([eq[hi] for _, _, hi in two], 1), cat(y2, 2))
        z1, z2 = triples.and_gates_many(
            party,
            [(g1[0], g1[1], g1[2].reshape(-1, 1)), (g2[0], g2[1], g2[2].reshape(-1, 2))],
            tag=f"{tag}.and{nid}",
        )
        for b, (a, _lo, hi) in enumerate(one):
            lt[nid + a] = lt[hi] ^ z1[b * n : (b + 1) * n, 0]
        for b, (a, _lo, hi) in enumerate(two):
            lt[nid + a] = lt[hi] ^ z2[b * n : (b + 1) * n, 0]
            eq[nid + a] = z2[b * n : (b + 1) * n, 1]
        nid += len(lv)  # plan() numbers the merged nodes of a level in order
    return lt[nid - 1] if p.levels else lt[0]


# ------------------------------------------------------------------------------ MSB
def msb_cost(k: int, n: int, ell: int, m: int | None = None) -> OtCost:
    """MSB of an additively shared ``ell``-bit value: one millionaire on ``ell - 1`` bits."""
    return cost(k, n, ell - 1, m)


def msb_offline(session: OtSession, n: int, ell: int, m: int | None = None) -> Pre:
    return offline(session, n, ring.check_ell(ell) - 1, m)


def msb_online(party: Party, pre: Pre, x: torch.Tensor, tag: str = "ot.msb") -> torch.Tensor:
    """XOR share (uint8, shape of ``x``) of the MSB of ``x0 + x1 mod 2^ell`` (``ell`` from pre)."""
    ell = pre.plan.ell + 1
    xs = ring.reduce(x.reshape(-1), ell).numpy()
    low = xs & ((1 << (ell - 1)) - 1)
    top = ((xs >> (ell - 1)) & 1).astype(np.uint8)
    v = ((1 << (ell - 1)) - 1 - low) if party.rank == SERVER else low
    c = online(party, pre, v, tag)
    return torch.from_numpy(top ^ c).reshape(x.shape)
