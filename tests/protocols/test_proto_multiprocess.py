"""Real OS processes over CrypTen's communicator (gloo, loopback): counts are exact, mismatched
and dead peers give a PeerError in bounded time. Every test cleans up its processes."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from privquant.protocols import requant as rq
from privquant.protocols.primitives import ring
from privquant.protocols.transport.channel import HEADER_BYTES
from privquant.protocols.transport.crypten import PIECE_BYTES

pytestmark = pytest.mark.multiprocess
WORKER = Path(__file__).with_name("mp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(mode: str, ranks, timeout: float):
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        "TORCH_CPP_LOG_LEVEL": "FATAL",
    }
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(port), mode, str(timeout)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in ranks
    ]


def _collect(procs, ranks, deadline: float) -> dict:
    outs = {}
    try:
        for r, p in zip(ranks, procs):
            stdout, _stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
            outs[r] = json.loads(lines[-1]) if lines else {"exit": p.returncode}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return outs


def _launch(mode: str, ranks=(0, 1, 2), timeout: float = 20.0, budget: float = 55.0):
    return _collect(_start(mode, ranks, timeout), ranks, time.monotonic() + budget)


def test_exchange_dealer_message_and_requant_over_gloo():
    t0 = time.monotonic()
    out = _launch("basic")
    assert time.monotonic() - t0 < 60
    p0, p1, d = out[0], out[1], out[2]
    assert all("error" not in o for o in out.values()), out
    # one exchange: each party sent 50 x 11 bits in one 16 + 69 byte message, 1 round
    for me, other in ((p0, 2), (p1, 1)):
        ex = me["scopes"]["exchange"]
        assert ex["bits_sent"]["online"] == 550 and ex["msgs_sent"]["online"] == 1
        assert ex["wire_sent"]["online"] == 16 + 69 and ex["depth"]["online"] == 1
        assert me["y"] == [other] * 50
    # one dealer message: 100 x 13 bits to P1, nothing to P0
    dd = d["scopes"]["dealer"]
    assert dd["bits_sent"]["offline"] == 1300 and dd["msgs_sent"]["offline"] == 1
    assert dd["wire_sent"]["offline"] == 16 + 163
    assert p1["scopes"]["dealer"]["bits_recv"]["offline"] == 1300
    assert p0["scopes"]["dealer"]["bits_recv"]["offline"] == 0
    r = ring.reduce(torch.tensor(p0["r"]) + torch.tensor(p1["r"]), 13)
    assert r.tolist() == d["r_value"]
    assert (
        ring.reduce(torch.tensor(p0["s"]) + torch.tensor(p1["s"]), 13).tolist()
        == ring.reduce(r * 5, 13).tolist()
    )
    # seeds: 3 x 128 setup bits
    assert sum(o["stats"]["bits_sent"]["setup"] for o in out.values()) == 384
    # the fused requant over real processes: exact, and measured == declared
    sig = rq.RequantSig(64, 20, 12, 0, 15, -(1 << 19), (1 << 19) - 1, 20)
    t = torch.arange(-(1 << 19), 1 << 19, (1 << 20) // 64)
    q = ring.reconstruct(torch.tensor(p0["q"]), torch.tensor(p1["q"]), 20)
    assert torch.equal(q, (t >> 12).clamp(0, 15))
    c = rq.FUSED.cost(sig)
    online = sum(o["scopes"]["requant"]["bits_sent"]["online"] for o in (p0, p1))
    depth = max(o["scopes"]["requant"]["depth"]["online"] for o in (p0, p1))
    offline = d["stats"]["bits_sent"]["offline"] - 1300
    assert (online, depth, offline) == (c.online_bits, c.rounds, c.offline_bits)


def test_messages_of_several_pieces_and_empty_ones_over_gloo():
    from mp_worker import big_messages

    out = _launch("big", timeout=40.0, budget=90.0)  # 30 MB over loopback on a shared machine
    assert all("error" not in o for o in out.values()), out
    assert out[0]["ok"] == out[1]["ok"] == [True] * 4 and out[1]["dealer_ok"]
    wire = sum(HEADER_BYTES + 2 * n for _, n in big_messages())
    for r in (0, 1):
        sc = out[r]["scopes"]["big"]  # accounting ignores the pieces: 4 messages, 4 rounds
        assert sc["msgs_sent"]["online"] == 4 and sc["depth"]["online"] == 4
        assert sc["wire_sent"]["online"] == sc["wire_recv"]["online"] == wire
    assert out[2]["scopes"]["big"]["wire_sent"]["offline"] == HEADER_BYTES + PIECE_BYTES


def test_mismatched_silent_dead_and_absent_peers_fail_cleanly():
    t0 = time.monotonic()
    scenarios = {  # run concurrently, each on its own port
        "mismatch": ((0, 1, 2), 10),
        "silent": ((0, 1), 3),
        "dead": ((0, 1), 30),
        "alone": ((0,), 2),  # the client never shows up
    }
    started = {}
    try:
        for mode, (ranks, timeout) in scenarios.items():
            started[mode] = _start(mode, ranks, timeout)
    finally:
        out = {m: _collect(started[m], scenarios[m][0], t0 + 55) for m in started}
    assert "protocol mismatch" in out["mismatch"][0]["error"]
    assert out["mismatch"][0]["error"].startswith("PeerError")
    assert "timed out after 3 s" in out["silent"][0]["error"]
    assert out["dead"][0]["error"].startswith("PeerError: lost the connection")
    assert out["dead"][1] == {"exit": 3}
    assert out["alone"][0]["error"].startswith("PeerError: could not connect the server (P0)")
    assert time.monotonic() - t0 < 60


def test_longer_shorter_and_v1_messages_give_a_peer_error_not_an_abort():
    """gloo aborts a process receiving a message longer than the posted receive; every receive
    is PIECE_BYTES long and no v2 message longer, so a mismatch is always a clean PeerError."""
    t0 = time.monotonic()
    scenarios = {
        "mismatch_long": (0, 1),  # 3 full pieces where 10 bytes are expected
        "mismatch_short": (0, 1),  # 10 bytes where 3 pieces are expected
        "v1_peer": (0, 1),  # a format-v1 sender: 16-byte header, then a 2-piece payload
    }
    started = {}
    try:
        for mode, ranks in scenarios.items():
            started[mode] = _start(mode, ranks, 10)
    finally:
        out = {m: _collect(started[m], scenarios[m], t0 + 55) for m in started}
    for mode in ("mismatch_long", "mismatch_short"):
        assert out[mode][0]["error"].startswith("PeerError: protocol mismatch"), out[mode]
    assert out["v1_peer"][0]["error"].startswith("PeerError: not a PrivQuant v2 message")
    assert time.monotonic() - t0 < 60
