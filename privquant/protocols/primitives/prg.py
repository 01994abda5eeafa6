"""Cryptographic pseudo-random generator for correlated randomness.

``Prg(key)`` expands a 128-bit (or longer) seed into a stream with SHAKE-256 (FIPS 202) in
counter mode: draw ``i`` is ``SHAKE256(key || le64(i)).digest(nbytes)``. Both holders of a seed
make the same sequence of draws, so they obtain the same values; anyone without the seed cannot
predict them (unlike a Mersenne Twister, whose state is recoverable from its outputs).
Ring elements of ``ell`` bits take ``ell <= 32 ? 4 : 8`` bytes each, masked to ``ell`` bits
(exactly uniform, the modulus is a power of two); bits are unpacked from bytes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


class Prg:
    """SHAKE-256 counter-mode stream; see the module docstring."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("PRG keys must have at least 128 bits")
        self._key = bytes(key)
        self._counter = 0

    def bytes(self, n: int) -> bytes:
        block = hashlib.shake_256(self._key + self._counter.to_bytes(8, "little"))
        self._counter += 1
        return block.digest(n) if n > 0 else b""

    def uniform(self, shape, ell: int) -> torch.Tensor:
        """Uniform elements of Z_{2^ell} as int64 in [0, 2^ell)."""
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape)) if shape else 1
        dt = np.dtype("<u4") if ell <= 32 else np.dtype("<u8")
        a = np.frombuffer(self.bytes(n * dt.itemsize), dtype=dt).astype(np.uint64)
        a &= np.uint64((1 << ell) - 1)
        return torch.from_numpy(a.view(np.int64)).reshape(shape)

    def random_bits(self, shape) -> torch.Tensor:
        """Uniform bits as uint8 0/1."""
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape)) if shape else 1
        raw = np.frombuffer(self.bytes((n + 7) // 8), dtype=np.uint8)
        # unpackbits returns a fresh writable array: no copy needed for torch
        return torch.from_numpy(np.unpackbits(raw, bitorder="little", count=n)).reshape(shape)
