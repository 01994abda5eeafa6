"""Channel accounting, Lamport rounds, header checks, the thread transport and Cost algebra."""

import math
import time

import numpy as np
import pytest
import torch

from privquant.errors import PeerError
from privquant.protocols.primitives import ring
from privquant.protocols.primitives.cost import ZERO, Cost
from privquant.protocols.transport.channel import HEADER_BYTES, combine
from privquant.protocols.transport.thread import simulate


def _x(n, ell, seed=0):
    return ring.uniform(torch.Generator().manual_seed(seed), (n,), ell)


@pytest.mark.parametrize("n,ell", [(1, 2), (10, 13), (100, 20), (33, 62), (0, 5)])
def test_exchange_counts_exactly(n, ell):
    x0, x1 = _x(n, ell, 1), _x(n, ell, 2)
    res = simulate(lambda p: p.exchange(x0, ell, "t"), lambda p: p.exchange(x1, ell, "t"))
    assert torch.equal(res.results[0], x1) and torch.equal(res.results[1], x0)
    for s in res.stats[:2]:
        assert s.bits_sent["online"] == n * ell == s.bits_recv["online"]
        assert s.msgs_sent["online"] == 1
        assert s.wire_sent["online"] == HEADER_BYTES + math.ceil(n * ell / 8)
        assert s.rounds == 1
    assert combine(res.stats[:2]).rounds == 1


def test_rounds_are_lamport_depth():
    x = _x(5, 8)

    def p0(p):
        y = p.recv(1, (5,), 8, "a")
        p.send(1, y, 8, "b")

    def p1(p):
        p.send(0, x, 8, "a")
        return p.recv(0, (5,), 8, "b")

    res = simulate(p0, p1)
    assert torch.equal(res.results[1], x)
    assert combine(res.stats[:2]).rounds == 2  # P1 -> P0 then P0 -> P1

    def q0(p):
        p.send(1, x, 8, "a")
        p.send(1, x, 8, "b")  # same direction, no waiting

    def q1(p):
        p.recv(0, (5,), 8, "a")
        p.recv(0, (5,), 8, "b")

    res = simulate(q0, q1)
    assert combine(res.stats[:2]).rounds == 1
    assert res.stats[0].messages == 2


def test_scopes_and_joint_depth():
    x = _x(4, 6)

    def body(p):
        with p.scope("lin"):
            if p.rank == 1:
                p.send(0, x, 6, "in")
            else:
                p.recv(1, (4,), 6, "in")
        with p.scope("act"):
            p.exchange(x, 6, "open")
            p.exchange_bits(torch.ones(9, dtype=torch.uint8), "and")

    res = simulate(body, body)
    lin = combine([p.scopes["lin"] for p in res.parties[:2]])
    act = combine([p.scopes["act"] for p in res.parties[:2]])
    assert (lin.online_bits, lin.rounds) == (24, 1)
    assert (act.online_bits, act.rounds) == (2 * 24 + 2 * 9, 2)
    assert combine(res.stats[:2]).rounds == 3  # depths add over consecutive scopes
    assert act.as_dict()["messages"] == 4


def test_header_mismatch_is_a_peer_error():
    def p0(p):
        p.send(1, torch.zeros(4, dtype=torch.int64), 8, "layer1.open")

    def p1(p):
        return p.recv(0, (4,), 8, "layer2.open")

    with pytest.raises(PeerError, match="protocol mismatch"):
        simulate(p0, p1, timeout=5)

    def q1(p):
        return p.recv(0, (5,), 8, "layer1.open")  # other size

    with pytest.raises(PeerError, match="different models"):
        simulate(p0, q1, timeout=5)


def test_exception_propagates_and_peers_abort_fast():
    def bad(p):
        raise ValueError("boom")

    def waiting(p):
        return p.recv(0, (3,), 4, "never")

    t = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        simulate(bad, waiting, waiting, timeout=30)
    assert time.monotonic() - t < 5


def test_timeout_without_hang():
    t = time.monotonic()
    with pytest.raises(PeerError, match="timed out"):
        simulate(lambda p: None, lambda p: p.recv(0, (3,), 4, "x"), timeout=0.5)
    assert time.monotonic() - t < 8


def test_cost_algebra():
    a = Cost(10, 5, 1, 2)
    b = Cost(1, 2, 3, 4)
    assert a.then(b) == Cost(11, 7, 4, 6) == a + b
    assert a.alongside(b) == Cost(11, 7, 4, 4)
    assert a.then(ZERO) == a and ZERO.alongside(a) == a
    assert Cost.sequence([a, b, a]) == Cost(21, 12, 5, 8)
    assert a.scaled(3) == Cost(30, 15, 3, 6)
    assert a.as_dict() == {"online_bits": 10, "offline_bits": 5, "setup_bits": 1, "rounds": 2}


def test_raw_bytes_roundtrip_and_accounting():
    from privquant.protocols.transport.thread import simulate

    payload = np.arange(1000, dtype=np.uint8) * 7

    def p0(party):
        party.send_raw(1, payload, "raw", phase="offline")
        party.send_raw(1, b"hello", "raw2")
        return None

    def p1(party):
        a = party.recv_raw(0, 1000, "raw", phase="offline")
        b = party.recv_raw(0, 5, "raw2")
        return a, bytes(b)

    res = simulate(p0, p1)
    a, b = res.results[1]
    assert np.array_equal(a, payload) and b == b"hello"
    s = res.parties[0].stats
    assert s.bits_sent["offline"] == 8000 and s.bits_sent["online"] == 40
