"""Base OTs and OT extension (IKNP = SoftSpokenOT k=1, and k = 2, 4, 8): correctness, exact cost,
and semi-honest security (the receiver cannot recover the other message; the sender's view does
not depend on the choice bits), with negative controls that show each test can fail."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from otlib import rot_pairs, run_pair, total_cost

from privquant.errors import PeerError
from privquant.protocols.preprocessing.ot import baseot, extension
from privquant.protocols.preprocessing.ot.aes import DOMAIN_ROT, FixedKeyAes, tccr, tweaks
from privquant.protocols.preprocessing.ot.cost import ZERO
from privquant.protocols.preprocessing.ot.extension import (
    KS,
    CotRecv,
    CotSend,
    extend_cost,
    setup_cost,
)
from privquant.protocols.transport.channel import CLIENT, SERVER
from privquant.protocols.transport.thread import simulate


# ------------------------------------------------------------------------------ base OT
def test_base_ots_both_directions_and_cost():
    c1 = np.array([0, 1, 1, 0, 1], dtype=np.uint8)  # P1's choices for P0's 5 instances
    c0 = np.array([1, 0, 0], dtype=np.uint8)  # P0's choices for P1's 3 instances

    def f0(p):
        return baseot.base_ots(p, 5, c0, sid=b"s")

    def f1(p):
        return baseot.base_ots(p, 3, c1, sid=b"s")

    r = simulate(f0, f1)
    (pairs0, keys0), (pairs1, keys1) = r.results[0], r.results[1]
    np.testing.assert_array_equal(keys1, pairs0[np.arange(5), c1])
    np.testing.assert_array_equal(keys0, pairs1[np.arange(3), c0])
    assert not (keys1 == pairs0[np.arange(5), 1 - c1]).all(axis=1).any()
    assert len({bytes(k) for k in pairs0.reshape(-1, 16)}) == 10
    assert total_cost(r) == baseot.cost(5, 3)
    assert baseot.cost(5, 3).setup_bits == 256 * (2 + 8) and baseot.cost(5, 3).setup_rounds == 2


def test_base_ots_reject_invalid_points():
    def f0(p):
        return baseot.base_ots(p, 2, np.zeros(0, dtype=np.uint8))

    def f1_bad(p):
        # a malicious receiver answers with a small-order point (the identity)
        p.recv_raw(p.peer, 32, "ot.base.A", phase="setup")
        ident = np.zeros(64, dtype=np.uint8)
        ident[0] = ident[32] = 1
        p.send_raw(p.peer, ident, "ot.base.B", phase="setup")

    with pytest.raises(PeerError, match="invalid curve point"):
        simulate(f0, f1_bad, timeout=10)


# ------------------------------------------------------------------------------ extension
def _check_cot(snd: CotSend, rcv: CotRecv):
    corr = np.where(rcv.r[:, None].astype(bool), snd.delta[None, :], 0)
    np.testing.assert_array_equal(snd.q ^ rcv.t, corr)


@settings(max_examples=12, deadline=None)
@given(
    k=st.sampled_from(KS),
    ns=st.lists(st.sampled_from([0, 1, 7, 8, 9, 64, 129, 1000]), min_size=1, max_size=3),
    chosen_bits=st.sampled_from(["zeros", "ones", "alt"]),
)
def test_extension_correct_both_directions(k, ns, chosen_bits):
    def choices(n):
        if chosen_bits == "zeros":
            return np.zeros(n, dtype=np.uint8)
        if chosen_bits == "ones":
            return np.ones(n, dtype=np.uint8)
        return (np.arange(n) % 3 == 1).astype(np.uint8)

    def f(p, s):
        out = []
        for n in ns:
            for sender in (SERVER, CLIENT):
                ch = choices(n) if p.rank != sender else None
                out.append(s.rot(sender, n))
                out.append(s.rot(sender, n, ch, chosen=True))
                out.append(s.cot(sender, n))
        return out

    r, cost = run_pair(k, f, f)
    declared = ZERO
    i = 0
    for n in ns:
        for sender in (SERVER, CLIENT):
            for j, chosen in enumerate((False, True, False)):
                snd, rcv = r.results[sender][i], r.results[1 - sender][i]
                i += 1
                if j == 2:
                    _check_cot(snd, rcv)
                    assert snd.q.shape == (n, 16)
                else:
                    good, other = rot_pairs(snd, rcv)
                    np.testing.assert_array_equal(rcv.m, good)
                    assert not (rcv.m == other).all(axis=1).any()
                    if chosen:
                        np.testing.assert_array_equal(rcv.r, choices(n))
                declared = declared.alongside(extend_cost(k, n, chosen))
    # all batches go one way per (direction) and never wait for each other except through the
    # sender's receive; bits must match exactly, depth is checked on single batches below
    assert cost.offline_bits == declared.offline_bits
    assert cost.online_bits == 0 and cost.setup_bits == 0
    assert total_cost(r).setup_bits == setup_cost(k).setup_bits


@pytest.mark.parametrize("k", KS)
def test_measured_equals_declared(k):
    n = 1000

    def f(p, s):
        s.rot(SERVER, n)

    r, cost = run_pair(k, f, f)
    assert cost == extend_cost(k, n)
    assert cost.offline_bits == (128 // k - 1) * n and cost.offline_rounds == 1
    tot = total_cost(r)
    assert tot.setup_bits == setup_cost(k).setup_bits
    assert tot.setup_rounds == setup_cost(k).setup_rounds
    assert setup_cost(k).setup_rounds == (2 if k == 1 else 3)

    def g(p, s):
        s.rot(
            CLIENT,
            77,
            np.ones(77, np.uint8) if p.rank == SERVER else None,
            chosen=True,
            phase="online",
        )

    r, cost = run_pair(k, g, g)
    assert cost == extend_cost(k, 77, True, phase="online")
    assert cost.online_bits == (128 // k) * 77


def test_messages_are_fresh_across_batches():
    def f(p, s):
        return s.rot(SERVER, 64), s.rot(SERVER, 64)

    r, _ = run_pair(2, f, f)
    a, b = r.results[0]
    assert b.index0 == a.index0 + 64
    keys = {bytes(x) for x in np.concatenate([a.m0, a.m1, b.m0, b.m1])}
    assert len(keys) == 4 * 64


def test_wrong_count_is_a_peer_error():
    def f0(p, s):
        s.rot(SERVER, 100)

    def f1(p, s):
        s.rot(SERVER, 101)

    with pytest.raises(PeerError):
        run_pair(1, f0, f1, timeout=10)


# ------------------------------------------------------------------------------ security
def _receiver_best_guess(rcv: CotRecv, delta_guess: np.ndarray) -> np.ndarray:
    """The receiver's reconstruction of the *other* messages m_{1-r} = H(t xor Delta, j)."""
    n = rcv.t.shape[0]
    return tccr(FixedKeyAes(), rcv.t ^ delta_guess[None, :], tweaks(rcv.index0, n, 0, DOMAIN_ROT))


def _delta_from_leaked_base_keys(k: int, recv_pairs: np.ndarray, leaked: np.ndarray) -> np.ndarray:
    """What the receiver learns from the sender's leaked base-OT keys: which key of each pair the
    sender holds is ``not alpha`` at that level, i.e. a bit of Delta."""
    bt = 128 // k
    got1 = (leaked == recv_pairs[:, :, 1]).all(-1)  # (B, k): the sender holds key 1
    dbits = np.zeros((bt, k), dtype=np.uint8)
    for d in range(1, k + 1):
        dbits[:, k - d] = 1 - got1[:, d - 1]
    return np.packbits(dbits.reshape(-1), bitorder="little")


@pytest.mark.parametrize("k", [1, 2, 8])
@pytest.mark.parametrize("sender", [SERVER, CLIENT])
def test_receiver_cannot_recover_other_message(k, sender):
    n = 4096

    def g(p, s):
        cot = s.cot(sender, n)  # the Delta-correlation behind the random OTs H(q), H(q^Delta)
        if p.rank == sender:
            return cot, s._base_keys
        # the receiver's whole view of this direction: its choice bits and t, the base-OT pairs
        # it sent, every leaf seed of the trees
        return cot, s._base_pairs, s._recv.leaves

    r, _ = run_pair(k, g, g)
    snd, leaked_keys = r.results[sender]
    rcv, recv_pairs, leaves = r.results[1 - sender]
    other_true = tccr(
        FixedKeyAes(),
        snd.q ^ np.where(rcv.r[:, None] == 1, 0, snd.delta[None, :]),
        tweaks(snd.index0, n, 0, DOMAIN_ROT),
    )
    # candidates the receiver can form from its own view: zero, all-ones, XORs of its seeds
    guesses = [
        np.zeros(16, np.uint8),
        np.full(16, 0xFF, np.uint8),
        np.bitwise_xor.reduce(leaves.reshape(-1, 16), axis=0),
        np.bitwise_xor.reduce(recv_pairs.reshape(-1, 16), axis=0),
        rcv.t[0],
    ]
    for g_ in guesses:
        guess = _receiver_best_guess(rcv, g_)
        assert (guess == other_true).all(axis=1).sum() == 0
        # 1-bit messages: the guess is no better than a coin (binomial, 6 sigma)
        hits = int(((guess[:, 0] & 1) == (other_true[:, 0] & 1)).sum())
        assert abs(hits - n / 2) < 6 * np.sqrt(n / 4)
    # control: had the sender leaked its base-OT keys, the same reconstruction succeeds
    delta = _delta_from_leaked_base_keys(k, recv_pairs, leaked_keys)
    np.testing.assert_array_equal(delta, snd.delta)
    np.testing.assert_array_equal(_receiver_best_guess(rcv, delta), other_true)


@pytest.mark.parametrize("k", [1, 4])
def test_sender_view_independent_of_choices(k, monkeypatch):
    n = 8192
    seen = []
    real_recv_rows = extension._recv_rows

    def spy(party, nrows, n_, tag, phase):
        rows = real_recv_rows(party, nrows, n_, tag, phase)
        seen.append(rows)
        return rows

    monkeypatch.setattr(extension, "_recv_rows", spy)

    def bias(rows: np.ndarray, r: np.ndarray) -> float:
        """Max over received rows of |P[row bit == choice bit] - 1/2| and |P[bit = 1] - 1/2|."""
        bits = np.unpackbits(rows, axis=1, count=n, bitorder="little")
        agree = (bits == r[None, :]).mean(axis=1)
        ones = bits.mean(axis=1)
        return float(max(np.abs(agree - 0.5).max(), np.abs(ones - 0.5).max()))

    patterns = {
        "zeros": np.zeros(n, np.uint8),
        "ones": np.ones(n, np.uint8),
        "random": np.random.default_rng(5).integers(0, 2, n).astype(np.uint8),
    }
    tol = 6 * 0.5 / np.sqrt(n)  # 6 sigma per row

    def run(choices):
        seen.clear()

        def f(p, s):
            return s.rot(SERVER, n, choices if p.rank == CLIENT else None, chosen=True)

        run_pair(k, f, f)
        assert len(seen) == 1 and seen[0].shape == (128 // k, n // 8)
        return seen[0].copy()

    views = {name: run(c) for name, c in patterns.items()}
    for name, c in patterns.items():
        assert bias(views[name], c) < tol, name
    # the views for different choice vectors are equally distributed: compare bit frequencies
    for a in patterns:
        for b in patterns:
            fa = np.unpackbits(views[a], axis=1, bitorder="little").mean()
            fb = np.unpackbits(views[b], axis=1, bitorder="little").mean()
            assert abs(fa - fb) < tol

    # control: a receiver whose PRG rows were all zero would send its choices in the clear,
    # and the same statistic catches it
    real_expand = extension._expand_receiver

    def leaky(d, nb):
        t, u = real_expand(d, nb)
        return t, np.zeros_like(u)

    monkeypatch.setattr(extension, "_expand_receiver", leaky)
    leaked = run(patterns["random"])
    assert bias(leaked, patterns["random"]) > 0.4


def test_cost_formulas_values():
    # exact closed forms
    assert extend_cost(1, 10).offline_bits == 1270
    assert extend_cost(2, 10, chosen=True).offline_bits == 640
    assert extend_cost(8, 10).offline_bits == 150
    assert extend_cost(4, 0) == ZERO
    assert setup_cost(1).setup_bits == 2 * (256 + 128 * 256)
    assert setup_cost(4).setup_bits == 2 * (256 + 128 * 256) + 2 * 32 * 3 * 256
    with pytest.raises(ValueError):
        extension.check_k(3)
