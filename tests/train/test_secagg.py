"""Private aggregation: pairwise masks cancel in the sum bit for bit, and one worker's masked
payload is uniform on the ring (chi-square) whatever its codes."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from scipy.stats import chisquare

from privquant.errors import PeerError
from privquant.train.gradcomp.base import ring_decode, ring_encode
from privquant.train.gradcomp.secagg import PairwiseMasks


class _Comm:
    """Key agreement among W in-process 'ranks': each call returns every rank's public key."""

    def __init__(self, rank, world, pubs):
        self.rank, self.world, self.pubs = rank, world, pubs

    def allgather_now(self, t):
        return [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in self.pubs]


class _ThreadComm:
    """W ranks as threads: all_gather through a shared list and a barrier."""

    def __init__(self, rank, world, board, barrier):
        self.rank, self.world, self.board, self.barrier = rank, world, board, barrier

    def allgather_now(self, t):
        self.board[self.rank] = t.clone()
        self.barrier.wait(timeout=30)
        return list(self.board)


def masks_for(world: int) -> list[PairwiseMasks]:
    """Every rank runs the real key agreement (X25519 + HKDF) concurrently."""
    board, barrier = [None] * world, threading.Barrier(world)
    out = [None] * world

    def rank_main(r):
        out[r] = PairwiseMasks.agree(_ThreadComm(r, world, board, barrier))

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert out[0].keys[1] == out[1].keys[0]  # both ends derive the same pair key
    assert len({k for m in out for k in m.keys.values()}) == world * (world - 1) // 2
    return out


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("ring_bits", [8, 32])
def test_masked_sum_equals_plain_sum(world, ring_bits):
    gen = torch.Generator().manual_seed(world)
    bound = 127 // world if ring_bits == 8 else 2**20
    codes = [torch.randint(-bound, bound + 1, (999,), generator=gen) for _ in range(world)]
    masks = masks_for(world)
    masked = [
        ring_encode(c, ring_bits, m.mask(step=7, bucket=2, n=999, ring_bits=ring_bits))
        for c, m in zip(codes, masks, strict=True)
    ]
    # what gloo's SUM does: add in the word type (uint8 wraps mod 256; int32 two's complement)
    acc = masked[0].numpy().astype(np.int64)
    for t in masked[1:]:
        acc = acc + t.numpy().astype(np.int64)
    acc = acc % (1 << ring_bits)
    if ring_bits == 8:
        word = torch.from_numpy(acc.astype(np.uint8))
    else:
        word = torch.from_numpy(acc.astype(np.uint32).view(np.int32))
    assert torch.equal(ring_decode(word, ring_bits), sum(codes))
    assert not torch.equal(ring_decode(masked[0], ring_bits), codes[0])  # really masked


def test_single_masked_payload_is_uniform():
    """Rank 0's message for an all-zero (and an all-max) code vector: uniform bytes."""
    m0 = masks_for(2)[0]
    n = 256 * 400
    for fill in (0, 100):
        codes = torch.full((n,), fill)
        msg = ring_encode(codes, 8, m0.mask(step=1, bucket=0, n=n, ring_bits=8)).numpy()
        _, p = chisquare(np.bincount(msg, minlength=256))
        assert p > 1e-4, (fill, p)
    w = ring_encode(torch.zeros(n // 4, dtype=torch.int64), 32, m0.mask(3, 0, n // 4, 32))
    b = w.numpy().view(np.uint8)
    _, p = chisquare(np.bincount(b, minlength=256))
    assert p > 1e-4


def test_masks_differ_per_step_and_bucket():
    m = masks_for(2)[0]
    a = m.mask(1, 0, 64, 8)
    assert not np.array_equal(a, m.mask(2, 0, 64, 8))
    assert not np.array_equal(a, m.mask(1, 1, 64, 8))
    assert np.array_equal(a, m.mask(1, 0, 64, 8))


def test_agreement_rejects_bad_public_key():
    good = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with pytest.raises(PeerError):
        PairwiseMasks.agree(_Comm(0, 2, [good, b"\x00" * 32]))  # the all-zero point
    with pytest.raises(PeerError):
        PairwiseMasks.agree(_Comm(0, 2, [good, b"\x01" * 7]))


def test_gradcomp_imports_no_two_party_code():
    code = (
        "import sys, privquant.train.gradcomp, privquant.train.ddp, privquant.train.launch\n"
        "import privquant.train.gradcomp.secagg, privquant.train.options\n"
        "bad = [m for m in sys.modules if m.startswith(('privquant.protocols', 'crypten'))]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
