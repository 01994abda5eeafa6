"""The sender's keys of random 1-out-of-2^m OTs, computed with half the AES work.

:class:`~privquant.protocols.preprocessing.ot.nofn.NofNSend` defines the key of index ``j`` as
``R_j = XOR_l F(K_l^{j_l}, (idx_l, j))`` with ``F`` the TCCR hash
``H(x, t) = pi(pi(x) xor t) xor pi(x)`` (low 64 bits, :mod:`~privquant.protocols.preprocessing.
ot.aes`). The sender evaluates it for every ``j``: ``m * 2^m`` hashes per OT, 2 AES each, and
``pi(x)`` only depends on the OT key ``x = K_l^b``, not on ``j``. :func:`sender_keys` computes the
same values (a test checks equality with ``NofNSend.keys``) with ``pi(K_l^b)`` once per key:
``m * 2^m + 2m`` AES blocks per OT instead of ``2 * m * 2^m``, words XORed as uint64. This is the
offline hot spot of the comparison leaves at P0 (measured: about half of P0's offline time).
"""

from __future__ import annotations

import numpy as np

from privquant.protocols.preprocessing.ot.aes import DOMAIN_NOFN, FixedKeyAes
from privquant.protocols.preprocessing.ot.nofn import NofNSend

_BLOCKS = 1 << 15  # AES blocks per chunk (2 MiB)


def sender_keys(send: NofNSend, width: int) -> np.ndarray:
    """``send.keys(width)``: all keys ``R_j`` truncated to ``width <= 64`` bits, (n, 2^m) uint64."""
    cache = send._cache  # shared with NofNSend.keys: one computation per width
    if width in cache:
        return cache[width]
    n, m = len(send), send.m
    big = 1 << m
    pi = FixedKeyAes()
    k2 = np.stack([send.rot.m0, send.rot.m1], axis=1).reshape(n, m, 2, 16)
    sel = ((np.arange(big)[None, :] >> np.arange(m)[:, None]) & 1).astype(np.intp)  # (m, N)
    lsel = np.arange(m)[:, None]
    out = np.empty((n, big), dtype=np.uint64)
    step = max(1, _BLOCKS // (m * big))
    # tweak words of a chunk, relative to its first OT: (step, m, N, 2) = (i*m + l, domain|j)
    local = np.empty((step, m, big, 2), dtype=np.uint64)
    local[..., 0] = (np.arange(step, dtype=np.uint64)[:, None, None] * np.uint64(m)) + np.arange(
        m, dtype=np.uint64
    )[None, :, None]
    local[..., 1] = (np.uint64(DOMAIN_NOFN) << np.uint64(32)) | np.arange(big, dtype=np.uint64)
    for s in range(0, n, step):
        e = min(n, s + step)
        c = e - s
        pk = pi(np.ascontiguousarray(k2[s:e]).reshape(-1, 16))  # pi(K_l^b), (c*m*2, 16)
        pkv = pk.view("V16").reshape(c, m, 2)
        a = np.ascontiguousarray(pkv[:, lsel, sel]).view("<u8").reshape(c, m, big, 2)
        tw = local[:c].copy()
        tw[..., 0] += np.uint64(send.rot.index0 + s * m)
        np.bitwise_xor(a, tw, out=tw)
        h = pi(tw.view(np.uint8).reshape(-1, 16)).view("<u8").reshape(c, m, big, 2)
        np.bitwise_xor(h, a, out=h)
        out[s:e] = np.bitwise_xor.reduce(h, axis=1)[..., 0]
    if width < 64:
        out &= np.uint64((1 << width) - 1)
    cache[width] = out
    return out
