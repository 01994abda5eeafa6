"""Rings, shares and bit-exact packing."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privquant.errors import PrivQuantError
from privquant.protocols.primitives import packing, ring


@pytest.mark.parametrize("ell", [0, 1, 63, 64, -3, 2.5, "8"])
def test_check_ell_rejects(ell):
    with pytest.raises(PrivQuantError, match="ring width"):
        ring.check_ell(ell)


@pytest.mark.parametrize("ell", [2, 3, 16, 40, 62])
def test_check_ell_accepts(ell):
    assert ring.check_ell(ell) == ell


@settings(deadline=None, max_examples=40)
@given(ell=st.integers(2, 62), seed=st.integers(0, 2**31), n=st.integers(0, 50))
def test_share_reduce_signed(ell, seed, n):
    g = torch.Generator().manual_seed(seed)
    half = 1 << (ell - 1)
    x = torch.randint(-half, half, (n,), generator=g) if n else torch.zeros(0, dtype=torch.int64)
    x0, x1 = ring.share(x, ell, g)
    for s in (x0, x1):
        assert bool(((s >= 0) & (s < (1 << ell))).all())
    assert torch.equal(ring.reconstruct(x0, x1, ell), x)
    assert torch.equal(ring.to_signed(ring.reduce(x, ell), ell), x)


def test_edge_values_signed():
    for ell in (2, 5, 62):
        h = 1 << (ell - 1)
        x = torch.tensor([-h, -1, 0, 1, h - 1])
        assert torch.equal(ring.to_signed(ring.reduce(x, ell), ell), x)
        assert torch.equal(
            ring.reduce(torch.tensor([1 << ell, -(1 << ell)]), ell),
            torch.zeros(2, dtype=torch.int64),
        )


@settings(deadline=None, max_examples=40)
@given(m=st.integers(1, 62), seed=st.integers(0, 2**31))
def test_bits_roundtrip(m, seed):
    g = torch.Generator().manual_seed(seed)
    x = ring.uniform(g, (7, 3), m)
    b = ring.bits(x, m)
    assert b.shape == (m, 7, 3) and b.dtype == torch.uint8
    assert torch.equal(ring.from_bits(b), x)
    assert torch.equal(ring.bits(x, 1, m - 1)[0], ((x >> (m - 1)) & 1).to(torch.uint8))


@settings(deadline=None, max_examples=60)
@given(ell=st.integers(1, 64), n=st.integers(0, 300), seed=st.integers(0, 2**31))
def test_pack_roundtrip_exact_size(ell, n, seed):
    rng = np.random.default_rng(seed)
    hi = (1 << ell) - 1
    a = rng.integers(0, 2**62, size=n, dtype=np.int64).astype(np.uint64)
    if ell < 64:
        a = a & np.uint64(hi)
    vals = rng.choice([0, hi], size=n).astype(np.uint64) if n and seed % 3 == 0 else a
    x = torch.from_numpy(vals.view(np.int64))
    buf = packing.pack(x, ell)
    assert buf.dtype == torch.uint8 and buf.numel() == math.ceil(n * ell / 8)
    assert torch.equal(packing.unpack(buf, n, ell), x)


def test_pack_bit_layout_and_chunks():
    # little-endian bit stream: value i occupies bits i*ell ...
    x = torch.tensor([1, 2, 3, 4])
    assert packing.pack(x, 3).tolist() == [1 | (2 << 3) | ((3 & 3) << 6), (3 >> 2) | (4 << 1)]
    n = packing.CHUNK + 13  # crosses a chunk boundary
    g = torch.Generator().manual_seed(1)
    x = ring.uniform(g, (n,), 3)
    buf = packing.pack(x, 3)
    assert buf.numel() == math.ceil(n * 3 / 8)
    assert torch.equal(packing.unpack(buf, n, 3), x)


def test_unpack_every_width_against_a_bit_reference():
    """Every ``ell`` (the byte path, the 64-bit windows up to 57 bits, bit expansion above), group
    tails of 1..7 elements and one crossing a chunk: ``unpack`` reads the little-endian bit
    stream exactly (reference: Python integers)."""
    rng = np.random.default_rng(5)
    for ell in range(1, 65):
        for n in (1, 7, 8, 9, 61) + ((packing.CHUNK + 5,) if ell in (13, 20, 57) else ()):
            buf = rng.integers(0, 256, size=math.ceil(n * ell / 8), dtype=np.uint8)
            if n * ell % 8:  # the unused high bits of the last byte are zero on the wire
                buf[-1] &= (1 << (n * ell % 8)) - 1
            got = packing.unpack(torch.from_numpy(buf), n, ell).numpy().view(np.uint64)
            stream = int.from_bytes(buf.tobytes(), "little")
            idx = [0, n - 1, n // 2] if n > 100 else range(n)
            want = [(stream >> (i * ell)) & ((1 << ell) - 1) for i in idx]
            assert [int(got[i]) for i in idx] == want, (ell, n)


def test_pack_rejects_unreduced_values():
    with pytest.raises(ValueError, match="does not fit"):
        packing.pack(torch.tensor([8]), 3)
    with pytest.raises(ValueError, match="expected"):
        packing.unpack(torch.zeros(3, dtype=torch.uint8), 10, 3)


@settings(deadline=None, max_examples=30)
@given(n=st.integers(0, 100), seed=st.integers(0, 2**31))
def test_pack_bits_roundtrip(n, seed):
    g = torch.Generator().manual_seed(seed)
    b = ring.random_bits(g, (n,))
    buf = packing.pack_bits(b)
    assert buf.numel() == math.ceil(n / 8)
    assert torch.equal(packing.unpack_bits(buf, n), b)
    assert torch.equal(packing.unpack_bits(packing.pack_bits(b.bool()), n), b)


def test_bits_and_to_signed_every_width_against_python_ints():
    """``bits`` (read from the bytes of each int64) and ``to_signed`` (shift up, arithmetic
    shift down) at every width, start and edge value, against Python integer arithmetic."""
    g = torch.Generator().manual_seed(2)
    edge = [0, 1, -1, 2**62, 2**63 - 1, -(2**63), -(2**61), 12345, -12345]
    for ell in range(2, 63):
        rnd = torch.randint(-(2**62), 2**62, (200,), generator=g).tolist()
        vals = rnd + edge + [2 ** (ell - 1), 2 ** (ell - 1) - 1, -(2 ** (ell - 1)), 2**ell - 1]
        x = torch.tensor(vals)
        u = [v % (1 << ell) for v in vals]
        assert ring.to_signed(x, ell).tolist() == [
            v - (1 << ell) if v >> (ell - 1) else v for v in u
        ]
        xr = ring.reduce(x, ell).reshape(-1, 1)
        for start in {0, min(5, ell - 1), ell - 1}:
            m = ell - start
            b = ring.bits(xr, m, start)
            assert b.shape == (m, len(vals), 1) and b.dtype == torch.uint8
            assert b[:, :, 0].t().tolist() == [[v >> (start + j) & 1 for j in range(m)] for v in u]
