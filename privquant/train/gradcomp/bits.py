"""Bit packing of small unsigned codes and segment (per-layer) reductions, vectorized.

``pack(codes, b)`` stores ``n`` codes of ``b`` bits (``0 <= code < 2**b``, ``1 <= b <= 8``) in
exactly ``packed_len(n, b) = ceil(n*b/8)`` bytes, little-endian bit order (code i occupies bits
``i*b .. i*b+b-1`` of the stream); ``unpack`` inverts it and needs the count ``n``. Shared by
every compressor; no dependence on the inference code.
"""

from __future__ import annotations

import numpy as np
import torch


def packed_len(n: int, b: int) -> int:
    """Bytes that ``n`` codes of ``b`` bits occupy."""
    return (n * b + 7) // 8


def code_bits(values: int) -> int:
    """Bits of a fixed-width code for ``values`` distinct values (at least 1)."""
    return max(1, (values - 1).bit_length())


def pack(codes: torch.Tensor, b: int) -> torch.Tensor:
    """``codes`` (integers in [0, 2**b)) -> uint8 tensor of ``packed_len(n, b)`` bytes."""
    if not 1 <= b <= 8:
        raise ValueError(f"code width must be 1..8 bits, got {b}")
    c = codes.reshape(-1).to(torch.uint8).numpy()
    if b == 8:
        return torch.from_numpy(c.copy())
    if 8 % b == 0:  # 1, 2, 4 bits: whole codes per byte, no bit-level expansion
        per = 8 // b
        pad = (-len(c)) % per
        if pad:
            c = np.concatenate([c, np.zeros(pad, np.uint8)])
        c = c.reshape(-1, per).astype(np.uint16)
        shifts = (np.arange(per, dtype=np.uint16) * b)[None, :]
        return torch.from_numpy(((c << shifts).sum(1)).astype(np.uint8))
    bits = np.unpackbits(c[:, None], axis=1, count=b, bitorder="little")
    return torch.from_numpy(np.packbits(bits.reshape(-1), bitorder="little"))


def unpack(data: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``n`` codes (int64) from ``packed_len(n, b)`` bytes."""
    if not 1 <= b <= 8:
        raise ValueError(f"code width must be 1..8 bits, got {b}")
    d = data.reshape(-1).to(torch.uint8).numpy()
    if len(d) != packed_len(n, b):
        raise ValueError(f"{len(d)} bytes cannot hold exactly {n} codes of {b} bits")
    if b == 8:
        return torch.from_numpy(d.astype(np.int64))
    if 8 % b == 0:
        per = 8 // b
        shifts = (np.arange(per, dtype=np.uint8) * b)[None, :]
        c = (d[:, None] >> shifts) & np.uint8((1 << b) - 1)
        return torch.from_numpy(c.reshape(-1)[:n].astype(np.int64))
    bits = np.unpackbits(d, bitorder="little")[: n * b].reshape(n, b)
    weights = (1 << np.arange(b, dtype=np.int64))[None, :]
    return torch.from_numpy((bits.astype(np.int64) * weights).sum(1))


class Segments:
    """The parameter tensors (layers) laid end to end in one flat bucket: per-element layer ids
    and per-layer reductions (sum, max, mean) in a few vectorized ops."""

    def __init__(self, sizes: list[int]):
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f"layer sizes must be positive, got {sizes}")
        self.sizes = list(sizes)
        self.count = len(sizes)
        self.numel = int(sum(sizes))
        self.ids = torch.repeat_interleave(
            torch.arange(self.count), torch.tensor(self.sizes, dtype=torch.int64)
        )
        self.n = torch.tensor(self.sizes, dtype=torch.float32)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.count, dtype=x.dtype).index_add_(0, self.ids, x)

    def amax(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((self.count,), -float("inf"), dtype=x.dtype)
        return out.scatter_reduce_(0, self.ids, x, reduce="amax")

    def amin(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((self.count,), float("inf"), dtype=x.dtype)
        return out.scatter_reduce_(0, self.ids, x, reduce="amin")

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.sum(x) / self.n

    def expand(self, per_layer: torch.Tensor) -> torch.Tensor:
        """Per-layer values broadcast to the elements."""
        return per_layer[self.ids]
