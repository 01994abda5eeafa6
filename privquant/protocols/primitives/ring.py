"""Rings Z_{2^ell} and XOR bit shares.

Arithmetic shares live in ``Z_{2^ell}`` and are stored as ``torch.int64`` tensors reduced to
``[0, 2^ell)``, with ``2 <= ell <= 62`` (62 keeps ``2^ell`` and sums of two shares inside int64).
Products may wrap modulo ``2^64`` in int64 arithmetic; that is harmless because every result is
reduced modulo ``2^ell`` afterwards and ``2^ell`` divides ``2^64``.

XOR (boolean) shares are ``torch.uint8`` tensors holding one bit (0/1) per element; bit
decompositions are stored *position-major*: ``bits(x, m)[j]`` is bit ``j`` of every element of
``x`` (row ``j``), which keeps the rows of a prefix circuit contiguous. On the wire bits are packed
eight to a byte (:mod:`privquant.protocols.primitives.packing`).
"""

from __future__ import annotations

import torch

from privquant.errors import PrivQuantError

MIN_BITS = 2
MAX_BITS = 62


class RingWidthError(PrivQuantError, ValueError):
    """A ring width outside ``[MIN_BITS, MAX_BITS]`` was requested."""


def check_ell(ell: int) -> int:
    """Return ``ell`` as an int, or raise :class:`RingWidthError` if it is not in [2, 62]."""
    if isinstance(ell, bool) or not isinstance(ell, int):
        try:
            if int(ell) != ell:
                raise TypeError
            ell = int(ell)
        except (TypeError, ValueError):
            raise RingWidthError(f"ring width must be an integer, got {ell!r}") from None
    if not MIN_BITS <= ell <= MAX_BITS:
        raise RingWidthError(
            f"ring width ell={ell} is not supported: shares live in Z_2^ell with "
            f"{MIN_BITS} <= ell <= {MAX_BITS}"
        )
    return ell


def signed_bits(lo: int, hi: int) -> int:
    """Smallest ell with ``-2**(ell-1) <= lo`` and ``hi <= 2**(ell-1) - 1`` (at least 2)."""
    ell = 2
    while lo < -(1 << (ell - 1)) or hi > (1 << (ell - 1)) - 1:
        ell += 1
    return ell


def mask(ell: int) -> int:
    """``2^ell - 1``."""
    return (1 << ell) - 1


def reduce(x: torch.Tensor, ell: int) -> torch.Tensor:
    """``x mod 2^ell`` in ``[0, 2^ell)`` (works for negative int64 by two's complement)."""
    return torch.bitwise_and(x.to(torch.int64), mask(ell))


def to_signed(x: torch.Tensor, ell: int) -> torch.Tensor:
    """Centered representative in ``[-2^(ell-1), 2^(ell-1))`` of ``x mod 2^ell``."""
    # the low ell bits moved to the top, then an arithmetic shift back (sign extension): two
    # int64 passes instead of four (left shifts of int64 wrap, as unsigned, in torch)
    sh = 64 - ell
    return (x.to(torch.int64) << sh) >> sh


def uniform(gen, shape, ell: int) -> torch.Tensor:
    """Uniform elements of ``Z_{2^ell}`` drawn from ``gen`` (int64, ``[0, 2^ell)``).

    ``gen`` is a :class:`~privquant.protocols.prg.Prg` (protocol randomness) or a
    ``torch.Generator`` (test fixtures only).
    """
    if isinstance(gen, torch.Generator):
        return torch.randint(0, 1 << ell, tuple(shape), generator=gen, dtype=torch.int64)
    return gen.uniform(shape, ell)


def random_bits(gen, shape) -> torch.Tensor:
    """Uniform bits (uint8 0/1) drawn from ``gen`` (a Prg, or a torch.Generator in tests)."""
    if isinstance(gen, torch.Generator):
        return torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.uint8)
    return gen.random_bits(shape)


def bits(x: torch.Tensor, m: int, start: int = 0) -> torch.Tensor:
    """Bits ``start .. start+m-1`` of a non-negative int64 tensor, position-major.

    Returns a uint8 tensor of shape ``(m, *x.shape)`` whose row ``j`` is bit ``start + j``.
    """
    if m == 0 or start + m > 64 or x.numel() == 0:
        pos = torch.arange(start, start + m, dtype=torch.int64).reshape((m,) + (1,) * x.dim())
        return ((x.unsqueeze(0) >> pos) & 1).to(torch.uint8)
    # from the bytes of each int64 (little-endian host: byte k holds bits 8k..8k+7): row j is
    # byte (start+j)//8 shifted right by (start+j)%8, all in uint8 (1/8 of the int64 traffic)
    pos = torch.arange(start, start + m)
    by = x.to(torch.int64).contiguous().reshape(-1).view(torch.uint8).reshape(-1, 8).t()
    rows = by.index_select(0, pos // 8)
    out = (rows >> (pos % 8).to(torch.uint8).reshape(m, 1)) & 1
    return out.reshape((m, *x.shape))


def from_bits(b: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`bits` with ``start=0``: ``sum_j b[j] * 2^j`` (int64)."""
    m = b.shape[0]
    pos = torch.arange(m, dtype=torch.int64).reshape((m,) + (1,) * (b.dim() - 1))
    return (b.to(torch.int64) << pos).sum(0)


def share(x: torch.Tensor, ell: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive shares ``(x0, x1)`` of ``x`` in ``Z_{2^ell}`` (x0 uniform)."""
    x0 = uniform(gen, x.shape, ell)
    return x0, reduce(x - x0, ell)


def reconstruct(x0: torch.Tensor, x1: torch.Tensor, ell: int, signed: bool = True) -> torch.Tensor:
    """``x0 + x1 mod 2^ell``, as a signed (default) or unsigned representative."""
    s = reduce(x0 + x1, ell)
    return to_signed(s, ell) if signed else s


def xor_share(b: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """XOR shares ``(b0, b1)`` of a uint8 bit tensor (b0 uniform)."""
    b0 = random_bits(gen, b.shape)
    return b0, b.to(torch.uint8) ^ b0
