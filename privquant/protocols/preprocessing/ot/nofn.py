"""1-out-of-N OT (N = 2^m, m <= 8) from m random 1-out-of-2 OTs.

Source: M. Naor and B. Pinkas, "Oblivious Transfer and Polynomial Evaluation", STOC 1999
(1-out-of-N from log N 1-out-of-2 OTs and a PRF). The sender needs no ciphertext for random
messages, so a random 1-of-N OT costs exactly its m random OTs.

With the m random OTs ``(K_{l}^0, K_{l}^1)``, ``l = 0..m-1`` (receiver's choice bits ``i_l``), the
key of index ``j`` is ``R_j = XOR_l F(K_l^{j_l}, (idx_l, j))``, ``F`` the TCCR hash of :mod:`.aes`
keyed by the OT key (``F(K, t) = pi(pi(K) xor t) xor pi(K)``, an Even-Mansour PRF of ``t`` for a
secret ``K``), ``idx_l`` the random OT's global index, domain :data:`DOMAIN_NOFN`. The receiver,
holding ``K_l^{i_l}``, computes ``R_i`` (m hashes); for ``j != i`` some term uses a key it lacks.
The sender computes all ``N`` keys (``m*N`` hashes per OT).

Cost (:func:`cost`): ``m*n`` random OTs, ``(128/k - 1)*m*n`` bits (``128/k*m*n`` with a chosen
index), 1 round. KK13 (Walsh-Hadamard code) would cost 255 bits per OT for ``N = 256`` with
IKNP-style extension; with SoftSpokenOT ``k >= 4`` the m-OT form is cheaper for every ``m <= 8``
(``m*(128/k - 1) <= 8*31 = 248``), so it is the only form offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from privquant.protocols.preprocessing.ot.aes import DOMAIN_NOFN, FixedKeyAes, tccr
from privquant.protocols.preprocessing.ot.cost import OtCost, OtError
from privquant.protocols.preprocessing.ot.extension import (
    OtRequest,
    OtSession,
    RotRecv,
    RotSend,
    extend_cost,
)

MAX_M = 8
_BLOCKS = 1 << 17  # hash inputs per chunk on the sender side


def check_m(m: int) -> int:
    if not 1 <= int(m) <= MAX_M:
        raise OtError(f"1-out-of-2^m OT needs 1 <= m <= {MAX_M}, got {m}")
    return int(m)


def cost(k: int, n: int, m: int, chosen: bool = False, phase: str = "offline") -> OtCost:
    """``n`` random 1-out-of-2^m OTs."""
    return extend_cost(k, n * check_m(m), chosen, phase)


def _mask(width: int) -> np.uint64:
    return np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)


def _f(keys: np.ndarray, idx: np.ndarray, j: np.ndarray) -> np.ndarray:
    """F(keys[t], (idx[t], j[t])) for flat arrays; returns the low 64 bits as uint64."""
    tw = np.empty((keys.shape[0], 2), dtype="<u8")
    tw[:, 0] = idx
    tw[:, 1] = (np.uint64(DOMAIN_NOFN) << np.uint64(32)) | j.astype(np.uint64)
    h = tccr(FixedKeyAes(), keys, tw.view(np.uint8).reshape(-1, 16))
    return np.ascontiguousarray(h[:, :8]).view("<u8").reshape(-1)


@dataclass
class NofNSend:
    """Sender of ``n`` random 1-out-of-2^m OTs (the m random OTs of OT ``i`` are rows i*m..)."""

    m: int
    rot: RotSend
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.rot) // self.m

    def keys(self, width: int) -> np.ndarray:
        """All keys ``R_j`` truncated to ``width <= 64`` bits: (n, 2^m) uint64 (computed once:
        call it offline to take the ``m*2^m`` hashes per OT out of the online phase)."""
        if width not in self._cache:
            self._cache[width] = self._keys(width)
        return self._cache[width]

    def _keys(self, width: int) -> np.ndarray:
        n, m, big_n = len(self), self.m, 1 << self.m
        out = np.empty((n, big_n), dtype=np.uint64)
        k2 = np.stack([self.rot.m0, self.rot.m1], axis=1).reshape(n, m, 2, 16)
        j = np.arange(big_n)
        sel = (j[None, :] >> np.arange(m)[:, None]) & 1  # (m, N)
        step = max(1, _BLOCKS // (m * big_n))
        for s in range(0, n, step):
            e = min(n, s + step)
            c = e - s
            keys = k2[s:e][:, np.arange(m)[:, None], sel]  # (c, m, N, 16)
            idx = self.rot.index0 + (np.arange(s, e)[:, None] * m + np.arange(m)[None, :])
            idx = np.broadcast_to(idx[:, :, None], (c, m, big_n)).reshape(-1)
            jj = np.broadcast_to(j[None, None, :], (c, m, big_n)).reshape(-1)
            f = _f(keys.reshape(-1, 16), idx.astype(np.uint64), jj).reshape(c, m, big_n)
            out[s:e] = np.bitwise_xor.reduce(f, axis=1)
        return out & _mask(width)


@dataclass
class NofNRecv:
    """Receiver: its index ``i`` (n,) int64 and key ``R_i``."""

    m: int
    rot: RotRecv
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.rot) // self.m

    @property
    def index(self) -> np.ndarray:
        n, m = len(self), self.m
        r = self.rot.r.reshape(n, m).astype(np.int64)
        return (r << np.arange(m)).sum(1)

    def key(self, width: int) -> np.ndarray:
        """``R_i`` truncated to ``width <= 64`` bits: (n,) uint64 (cached, like ``keys``)."""
        if width not in self._cache:
            self._cache[width] = self._key(width)
        return self._cache[width]

    def _key(self, width: int) -> np.ndarray:
        n, m = len(self), self.m
        i = self.index
        idx = self.rot.index0 + np.arange(n * m, dtype=np.uint64)
        jj = np.repeat(i, m)
        f = _f(self.rot.m, idx, jj).reshape(n, m)
        return np.bitwise_xor.reduce(f, axis=1) & _mask(width)


def request(sender: int, n: int, m: int, index: np.ndarray | None = None, chosen=False):
    """The OT request of ``n`` 1-of-2^m OTs (a chosen ``index`` at the receiver only)."""
    m = check_m(m)
    choices = None
    if index is not None:
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if idx.size != n or (n and (idx.min() < 0 or idx.max() >= 1 << m)):
            raise OtError(f"1-of-2^{m} OT: expected {n} indices in [0, {1 << m})")
        choices = ((idx[:, None] >> np.arange(m)[None, :]) & 1).astype(np.uint8).reshape(-1)
    return OtRequest(sender, n * m, chosen=chosen, choices=choices)


def wrap(rank: int, sender: int, m: int, res) -> NofNSend | NofNRecv:
    return NofNSend(m, res) if rank == sender else NofNRecv(m, res)


def offline(
    session: OtSession,
    sender: int,
    n: int,
    m: int,
    index: np.ndarray | None = None,
    *,
    chosen: bool = False,
    phase: str = "offline",
) -> NofNSend | NofNRecv:
    """``n`` random 1-out-of-2^m OTs with ``sender`` holding all keys; with ``chosen`` the
    receiver passes its ``index`` (n,) values (known ahead), else the index is random."""
    req = request(sender, n, m, index, chosen)
    res = session.batch([req], phase=phase, tag="ot.nofn")[0]
    return wrap(session.party.rank, sender, m, res)
