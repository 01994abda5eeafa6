"""Private aggregation of summable payloads: pairwise PRG masks that cancel in the sum.

Source: the pairwise-masking layer of secure aggregation (Bonawitz et al., "Practical Secure
Aggregation for Privacy-Preserving Machine Learning", CCS 2017), without its dropout recovery:
semi-honest workers, no dropouts.

Steps:

1. Set-up (once per process group): every rank draws an X25519 key pair (``cryptography``) and
   the 32-byte public keys are all-gathered. Ranks ``i < j`` derive the pair key
   ``k_ij = HKDF-SHA256(X25519(sk_i, pk_j), info = "privquant-gradcomp-mask" | i | j)``.
2. Step ``t``, bucket ``b``, payload of ``n`` elements of the ring ``Z_2^k`` (``k`` = 8 or 32):
   ``r_ij = SHAKE-256(k_ij | t | b)`` read as ``n`` little-endian ``k``-bit words, and rank ``i``
   sends ``x_i + sum_{j>i} r_ij - sum_{j<i} r_ij  (mod 2^k)``.
3. The collective sums the masked vectors; every ``r_ij`` enters once with ``+`` (rank i) and
   once with ``-`` (rank j), so the sum is ``sum_i x_i (mod 2^k)`` bit for bit, and each rank's
   message is ``x_i`` plus a uniform word unknown to everyone but ``i`` and ``j``: uniform.

Cost: the same ring and length as the unmasked summable payload (no extra bytes per step);
set-up: one all_gather of 32 bytes per rank. Keys live in memory only (never in checkpoints).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privquant.errors import PeerError

_INFO = b"privquant-gradcomp-mask"


def _pair_key(shared: bytes, i: int, j: int) -> bytes:
    lo, hi = min(i, j), max(i, j)
    info = _INFO + lo.to_bytes(4, "little") + hi.to_bytes(4, "little")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


class PairwiseMasks:
    """Pair keys of one rank and the masks they expand to."""

    def __init__(self, rank: int, world: int, pair_keys: dict[int, bytes]):
        self.rank, self.world = rank, world
        self.keys = dict(pair_keys)

    @classmethod
    def agree(cls, comm) -> PairwiseMasks:
        """Key agreement over ``comm`` (a :class:`~privquant.train.gradcomp.comm.Comm`)."""
        sk = X25519PrivateKey.generate()
        pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        outs = comm.allgather_now(torch.frombuffer(bytearray(pk), dtype=torch.uint8))
        keys = {}
        for j, out in enumerate(outs):
            if j == comm.rank:
                continue
            if out.numel() != 32:
                raise PeerError(f"rank {j} sent a {out.numel()}-byte public key, expected 32")
            try:
                shared = sk.exchange(X25519PublicKey.from_public_bytes(bytes(out.numpy())))
            except ValueError as e:
                raise PeerError(f"rank {j} sent an invalid X25519 public key ({e})") from None
            keys[j] = _pair_key(shared, comm.rank, j)
        return cls(comm.rank, comm.world, keys)

    @staticmethod
    def expand(key: bytes, step: int, bucket: int, n: int, ring_bits: int) -> np.ndarray:
        """``n`` pseudorandom words of ``ring_bits`` (8 or 32) bits, as uint64."""
        nbytes = n * ring_bits // 8
        seed = key + step.to_bytes(8, "little") + bucket.to_bytes(4, "little")
        raw = hashlib.shake_256(seed).digest(nbytes)
        dtype = np.uint8 if ring_bits == 8 else np.dtype("<u4")
        return np.frombuffer(raw, dtype=dtype).astype(np.uint64)

    def mask(self, step: int, bucket: int, n: int, ring_bits: int) -> np.ndarray:
        """This rank's total mask ``sum_{j>i} r_ij - sum_{j<i} r_ij (mod 2^k)`` (uint64)."""
        modulus = np.uint64(1 << ring_bits) if ring_bits < 64 else None
        total = np.zeros(n, dtype=np.uint64)
        for j, key in sorted(self.keys.items()):
            r = self.expand(key, step, bucket, n, ring_bits)
            total = total + r if j > self.rank else total - r  # uint64 wraps mod 2^64
        return total % modulus
