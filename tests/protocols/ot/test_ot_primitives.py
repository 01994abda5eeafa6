"""Building blocks of the OT layer: transposes, fixed-key AES hashing, CTR streams, GGM trees."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from privquant.protocols.preprocessing.ot import aes, bitmatrix, ggm


@settings(max_examples=40, deadline=None)
@given(
    rows8=st.integers(1, 20),
    cols8=st.integers(0, 1200),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.sampled_from([8, 64, 4096]),
)
def test_transpose_matches_reference(rows8, cols8, seed, chunk):
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 256, size=(8 * rows8, cols8), dtype=np.uint8)
    got = bitmatrix.transpose(m, chunk=chunk)
    assert got.shape == (8 * cols8, rows8)
    np.testing.assert_array_equal(got, bitmatrix.transpose_reference(m))
    # definition, bit by bit: bit j of OT i == bit i of row j
    if cols8:
        i, j = int(rng.integers(0, 8 * cols8)), int(rng.integers(0, 8 * rows8))
        assert (got[i, j // 8] >> (j % 8)) & 1 == (m[j, i // 8] >> (i % 8)) & 1


def test_transpose_edge_patterns():
    m = np.zeros((128, 16), dtype=np.uint8)
    assert not bitmatrix.transpose(m).any()
    m[:] = 0xFF
    assert (bitmatrix.transpose(m) == 0xFF).all()
    m = np.zeros((128, 16), dtype=np.uint8)
    m[5, 3] = 1 << 6  # row 5, column 30
    t = bitmatrix.transpose(m)
    assert t[30, 0] == 1 << 5 and int(t.astype(np.int64).sum()) == 1 << 5
    with pytest.raises(ValueError):
        bitmatrix.transpose(np.zeros((12, 4), dtype=np.uint8))


def test_fixed_key_aes_is_aes_ecb_and_tccr_definition():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(37, 16), dtype=np.uint8)
    ref = Cipher(algorithms.AES(aes.FIXED_KEY), modes.ECB()).encryptor().update(x.tobytes())
    pi = aes.FixedKeyAes()
    np.testing.assert_array_equal(pi(x).reshape(-1), np.frombuffer(ref, dtype=np.uint8))
    tw = aes.tweaks(1000, 37, sub=3, domain=aes.DOMAIN_ROT)
    want = pi(pi(x) ^ tw) ^ pi(x)
    np.testing.assert_array_equal(aes.tccr(aes.FixedKeyAes(), x, tw), want)
    h = aes.TccrHasher()
    o0, o1 = np.empty_like(x), np.empty_like(x)
    delta = rng.integers(0, 256, size=16, dtype=np.uint8)
    h.hash_pair(x, delta, tw, o0, o1)
    np.testing.assert_array_equal(o0, want)
    np.testing.assert_array_equal(o1, aes.tccr(aes.FixedKeyAes(), x ^ delta, tw))
    # tweaks: index, sub and domain all matter
    assert not np.array_equal(aes.tccr(pi, x, aes.tweaks(1001, 37, 3)), want)
    assert not np.array_equal(aes.tccr(pi, x, aes.tweaks(1000, 37, 4)), want)
    assert not np.array_equal(aes.tccr(pi, x, aes.tweaks(1000, 37, 3, aes.DOMAIN_NOFN)), want)
    t = aes.tweaks(2**40 + 5, 2, sub=7, domain=9).view("<u8")
    assert t[0, 0] == 2**40 + 5 and t[1, 0] == 2**40 + 6 and t[0, 1] == (9 << 32) | 7


def test_ctr_streams_continue_across_calls():
    rng = np.random.default_rng(2)
    seeds = rng.integers(0, 256, size=(5, 16), dtype=np.uint8)
    a = aes.CtrStreams(seeds, domain=7)
    b = aes.CtrStreams(seeds, domain=7)
    whole = a.next(100)
    parts = np.concatenate(
        [b.next(3).copy(), b.next(0).copy(), b.next(50).copy(), b.next(47).copy()], axis=1
    )
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(
        whole[2], np.frombuffer(aes.ctr_expand(bytes(seeds[2]), 100, domain=7), dtype=np.uint8)
    )
    c = aes.CtrStreams(seeds, domain=8)
    assert not np.array_equal(c.next(100), whole)
    d = aes.CtrStreams(seeds, domain=7)
    np.testing.assert_array_equal(d.next(100, rows=[4, 1]), whole[[4, 1]])


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_ggm_puncturing(k):
    rng = np.random.default_rng(k)
    bt = 6
    pairs = rng.integers(0, 256, size=(bt, k, 2, 16), dtype=np.uint8)
    alpha = rng.integers(0, 1 << k, size=bt)
    alpha[0], alpha[1] = 0, (1 << k) - 1  # edge points
    leaves, corr = ggm.holder(pairs, k)
    assert leaves.shape == (bt, 1 << k, 16)
    assert corr.size * 8 == ggm.correction_bits(bt, k)
    # the puncturer got the key opposite to its path bit at every level
    depth_bits = (alpha[:, None] >> (k - 1 - np.arange(k))[None, :]) & 1
    keys = pairs[np.arange(bt)[:, None], np.arange(k)[None, :], 1 - depth_bits]
    got = ggm.puncturer(keys, alpha, corr, k)
    for b in range(bt):
        for x in range(1 << k):
            if x == alpha[b]:
                assert not got[b, x].any()
            else:
                np.testing.assert_array_equal(got[b, x], leaves[b, x])
    # leaves are distinct (no collapsed tree)
    assert len({bytes(v) for v in leaves.reshape(-1, 16)}) == bt << k
    # with a wrong key the puncturer's leaves are wrong (the test can fail)
    if k > 1:
        bad = keys.copy()
        bad[0, 1] ^= 1
        wrong = ggm.puncturer(bad, alpha, corr, k)
        assert not np.array_equal(
            wrong[0], np.where(np.arange(1 << k)[:, None] == alpha[0], 0, leaves[0])
        )
