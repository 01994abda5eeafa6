"""AND (Beaver bit) triples from random OT, and AND gates on XOR shares.

Source: the random-OT triple generation of Asharov-Lindell-Schneider-Zohner, CCS 2013, section 5
(two random OTs per triple, no message beyond the OT extension itself); Beaver's circuit
randomization (CRYPTO 1991) for the online AND.

Offline (:func:`offline`), ``n`` triples of width ``w`` (a bit ``a`` and a row ``b`` of ``w``
bits with ``c = a*b`` columnwise; ``w = 1`` is the ordinary triple, ``w = 2`` two triples sharing
``a`` -- what a comparison tree node needs, since its two ANDs share the operand ``eq_H``):

* random OT P0 -> P1 (keys ``m0, m1``; P1's random choice ``a1``): P0 sets ``b0 = lo_w(m0) xor
  lo_w(m1)``, ``v0 = lo_w(m0)``; P1 holds ``u1 = lo_w(m_{a1}) = v0 xor a1*b0``;
* random OT P1 -> P0 likewise: ``b1``, ``v1`` at P1; ``a0``, ``u0 = v1 xor a0*b1`` at P0;
* ``c_i = a_i*b_i xor u_i xor v_i``; then ``c0 xor c1 = (a0 xor a1)*(b0 xor b1)``.

``lo_w`` takes the key's low ``w`` bits (``w <= 64``). Both OT batches run in one round
(:meth:`OtSession.batch`). Cost: ``2*(128/k - 1)*n`` offline bits, 1 offline round
(:func:`offline_cost`).

Online (:func:`and_gates`): ``z = x*y`` for XOR-shared ``x`` (n,) and ``y`` (n, w): each party
sends ``x_i xor a_i`` and ``y_i xor b_i`` in one simultaneous exchange; with the opened ``d, e``:
``z_i = c_i xor d*b_i xor e*a_i xor [i = 0]*d*e``. Cost ``2*n*(1 + w)`` online bits, 1 round
(:func:`online_cost`). Several groups of different widths can share the exchange
(:func:`and_gates_many`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.preprocessing.ot.extension import OtRequest, OtSession, extend_cost
from privquant.protocols.transport.channel import CLIENT, SERVER, Party


@dataclass
class Triples:
    """One party's XOR shares: ``a`` (n,), ``b`` (n, w), ``c`` (n, w), uint8 0/1."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray

    def __len__(self) -> int:
        return self.a.shape[0]

    @property
    def width(self) -> int:
        return self.b.shape[1]

    def take(self, start: int, stop: int) -> Triples:
        return Triples(self.a[start:stop], self.b[start:stop], self.c[start:stop])


def low_bits(keys: np.ndarray, w: int) -> np.ndarray:
    """(n, 16) keys -> (n, w) uint8 bits 0..w-1 of the key (little-endian), ``w <= 128``."""
    nbytes = (w + 7) // 8
    return np.unpackbits(keys[:, :nbytes], axis=1, count=w, bitorder="little")


def offline_cost(k: int, n: int, phase: str = "offline") -> OtCost:
    return extend_cost(k, n, phase=phase).alongside(extend_cost(k, n, phase=phase))


def requests(n: int) -> list[OtRequest]:
    """The OT requests of ``n`` triples (to merge with other requests into one batch)."""
    return [OtRequest(SERVER, n), OtRequest(CLIENT, n)]


def from_rots(rank: int, rot01, rot10, w: int = 1) -> Triples:
    """Triples from the two random-OT results (P0 -> P1 first, then P1 -> P0)."""
    mine, theirs = (rot01, rot10) if rank == SERVER else (rot10, rot01)
    # `mine`: this party is the sender; `theirs`: this party is the receiver
    n0 = low_bits(mine.m0, w)
    b = n0 ^ low_bits(mine.m1, w)
    v = n0
    a = theirs.r.astype(np.uint8)
    u = low_bits(theirs.m, w)
    c = (a[:, None] & b) ^ u ^ v
    return Triples(a, b, c)


def offline(session: OtSession, n: int, w: int = 1, phase: str = "offline") -> Triples:
    """``n`` triples of width ``w`` (both parties call it); :func:`offline_cost`."""
    rot01, rot10 = session.batch(requests(n), phase=phase, tag="ot.triples")
    return from_rots(session.party.rank, rot01, rot10, w)


def online_cost(n: int, w: int = 1) -> OtCost:
    bits = 2 * n * (1 + w)
    return OtCost(online_bits=bits, online_rounds=1 if bits else 0)


def and_gates_many(
    party: Party, groups: list[tuple[Triples, np.ndarray, np.ndarray]], tag: str = "ot.and"
) -> list[np.ndarray]:
    """AND gates of several groups ``(triples, x (n,), y (n, w))`` in one exchange."""
    opened = []
    for t, x, y in groups:
        x = np.asarray(x, dtype=np.uint8).reshape(-1)
        y = np.asarray(y, dtype=np.uint8).reshape(len(x), t.width)
        if len(t) != x.size or t.width != y.shape[1]:
            raise OtError("AND gates: triples and operands differ in number or width")
        opened.append(np.concatenate([x ^ t.a, (y ^ t.b).reshape(-1)]))
    mine = np.concatenate(opened) if opened else np.zeros(0, dtype=np.uint8)
    if mine.size == 0:
        return [np.zeros_like(t.c) for t, _, _ in groups]
    theirs = party.exchange_bits(torch.from_numpy(mine), tag).numpy().astype(np.uint8)
    both = mine ^ theirs
    out, pos = [], 0
    for t, _, _ in groups:
        n, w = t.b.shape
        d = both[pos : pos + n]
        e = both[pos + n : pos + n + n * w].reshape(n, w)
        pos += n + n * w
        z = t.c ^ (d[:, None] & t.b) ^ (e & t.a[:, None])
        if party.rank == SERVER:
            z ^= d[:, None] & e
        out.append(z)
    return out


def and_gates(party: Party, t: Triples, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x*y`` on XOR shares (``x`` (n,), ``y`` (n, w) or (n,)); :func:`online_cost`."""
    y = np.asarray(y, dtype=np.uint8)
    flat = y.ndim == 1
    z = and_gates_many(party, [(t, x, y.reshape(len(y), -1))])[0]
    return z[:, 0] if flat else z
