"""``privquant serve`` and ``privquant dealer`` as real long-running processes on loopback.

One dealer and one server (resnet8) serve every test of the module; the server reaches its
dealer through a recording proxy, and the clients reach both through recording proxies, so the
eavesdropper test sees every byte on every link. Each hostile-client test checks that the
server drops that client with one log line and then answers an honest client bit-exactly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from net_helpers import RESNET, Proc, Proxy, make_keys, reconstruct

import privquant
from privquant.errors import PeerError
from privquant.launch import free_port
from privquant.program import Program, run_plain
from privquant.protocols.transport import tls
from privquant.protocols.transport.channel import make_header, tag_code
from privquant.serving import Client, connect_client

pytestmark = pytest.mark.multiprocess
TIMEOUT = 8.0


@pytest.fixture(scope="module")
def art():
    return privquant.load(RESNET)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    keys = make_keys(tmp, "server", "dealer")
    dport = free_port()
    dealer = Proc(
        "dealer", "--key", str(keys["dealer"][0]), "--trust-server", keys["server"][1],
        "--listen", f"127.0.0.1:{dport}", "--timeout", str(TIMEOUT),
    )  # fmt: skip
    dproxy = Proxy(("127.0.0.1", dport))
    sport = free_port()
    server = Proc(
        "serve", str(RESNET), "--key", str(keys["server"][0]),
        "--listen", f"127.0.0.1:{sport}", "--dealer", dproxy.address,
        "--dealer-key", keys["dealer"][1], "--output", "logits", "--timeout", str(TIMEOUT),
    )  # fmt: skip
    sproxy = Proxy(("127.0.0.1", sport))
    dealer.wait_line("dealing on")
    server.wait_line("serving")

    class S:
        pass

    s = S()
    s.tmp, s.keys, s.dealer, s.server = tmp, keys, dealer, server
    s.server_addr, s.dealer_addr = f"127.0.0.1:{sport}", f"127.0.0.1:{dport}"
    s.sproxy, s.dproxy = sproxy, dproxy
    s.sfp, s.dfp = keys["server"][1], keys["dealer"][1]
    yield s
    assert server.stop() == 0
    assert dealer.stop() == 0
    sproxy.close()
    dproxy.close()


def honest(svc, art, n=2, seed=0):
    """An honest client (Python API, this process) gets logits identical to the plaintext."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *art.input_shape), dtype=torch.uint8, generator=g)
    with Client(
        svc.server_addr, server_key=svc.sfp, dealer_key=svc.dfp,
        expect_hash=art.architecture_hash()[:16], timeout=30, log=lambda m: None,
    ) as c:  # fmt: skip
        out = c.infer(x)
    assert torch.equal(torch.tensor(out["logits_int"]), run_plain(art.program, x))
    return out


def dropped_after(svc, start: int, what: str, timeout: float = 3 * TIMEOUT) -> str:
    line = svc.server.wait_line("dropped", timeout=timeout, start=start)
    assert what in line, line
    new = svc.server.lines[start:]
    assert sum("dropped" in ln for ln in new) == 1, new
    assert not any("Traceback" in ln for ln in new)
    assert svc.server.p.poll() is None
    return line


def raw_client(svc):
    """TLS to the server, the hello, and the server's answer: then we misbehave."""
    host, port = svc.server_addr.split(":")
    s, _ = tls.tls_connect(
        host, int(port), tls.client_context(), pin=svc.sfp, peer="server", timeout=10
    )
    link = tls.Link(s, "server (P0)", 10)
    link.send_control({"v": 1, "role": "client"})
    reply = link.recv_control("answer")
    assert reply["ok"] is True
    return link


def cli(*args, timeout=120):
    p = subprocess.run(
        [sys.executable, "-m", "privquant.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return p.returncode, p.stdout, p.stderr


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("privquant: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------ honest
def test_cli_client_batch_in_chunks_is_bit_exact(svc, art, tmp_path):
    x = torch.randint(0, 256, (5, *art.input_shape), dtype=torch.uint8)
    np.save(tmp_path / "b.npy", x.numpy())
    fpfile = tmp_path / "server.fp"
    fpfile.write_text(svc.sfp + "\n")
    code, out, err = cli(
        "client", "--server", svc.server_addr, "--server-key", str(fpfile),
        "--dealer-key", svc.dfp, "--input", str(tmp_path / "b.npy"), "--chunk", "2",
        "--expect-hash", art.architecture_hash()[:16], "--json",
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    assert res["batches"] == [2, 2, 1]
    assert torch.equal(torch.tensor(res["logits_int"]), run_plain(art.program, x))
    assert "warning" not in err


def test_client_without_expect_hash_warns(svc, art):
    msgs = []
    x = torch.zeros((1, *art.input_shape), dtype=torch.uint8)
    with Client(svc.server_addr, server_key=svc.sfp, dealer_key=svc.dfp, log=msgs.append) as c:
        c.infer(x)
    assert any("not checking which model" in m and art.architecture_hash() in m for m in msgs)


def test_expect_hash_mismatch_refused_with_both_hashes_in_full(svc, art):
    other = privquant.load(RESNET.parent / "lenet5-w8a8.pq").architecture_hash()
    code, _, err = cli(
        "client",
        *("--server", svc.server_addr, "--server-key", svc.sfp),
        *("--dealer-key", svc.dfp, "--index", "0", "--expect-hash", other[:16]),
    )
    line = one_error_line(err)
    assert code == 2 and art.architecture_hash() in line and other[:16] in line
    assert "refusing before any secret is sent" in line


# ------------------------------------------------------------------------------------ attacks
def test_eavesdropper_learns_nothing_from_tls_traffic(svc, art):
    """Every byte of every link recorded; the reconstruction that decodes the unencrypted
    framing (test_net_link) finds nothing it can decode here."""
    nd = len(svc.dproxy.conns)
    x = torch.randint(0, 256, (1, *art.input_shape), dtype=torch.uint8)
    with Client(
        svc.sproxy.address, server_key=svc.sfp, dealer_key=svc.dfp, dealer=svc.dproxy.address,
        expect_hash=art.architecture_hash(), log=lambda m: None,
    ) as c:  # fmt: skip
        out = c.infer(x)
    assert torch.equal(torch.tensor(out["logits_int"]), run_plain(art.program, x))
    time.sleep(0.5)
    sc = svc.sproxy.conns[-1]  # client <-> server
    server_dealer, client_dealer = svc.dproxy.conns[nd], svc.dproxy.conns[nd + 1]
    total = sum(len(v) for r in (sc, server_dealer, client_dealer) for v in r.values())
    assert total > 2_000_000  # the whole session's traffic was recorded
    pub = Program.from_public_dict(art.program.public_dict())
    with pytest.raises(LookupError):
        reconstruct(
            pub, 1, bytes(sc["down"]), bytes(sc["up"]),
            bytes(client_dealer["down"]), bytes(server_dealer["down"]),
        )  # fmt: skip
    raw = x.numpy().tobytes()
    for rec in (sc["up"], sc["down"]):
        assert raw[:64] not in bytes(rec)
        assert b"linear.setup" not in bytes(rec) and b'"program"' not in bytes(rec)


def test_byte_flipping_proxy_is_refused(svc, art, tmp_path):
    host, port = svc.server_addr.split(":")
    flip = Proxy((host, int(port)), flip=("down", 20_000))
    start = len(svc.server.lines)
    code, _, err = cli(
        "client", "--server", flip.address, "--server-key", svc.sfp, "--dealer-key", svc.dfp,
        "--dealer", svc.dealer_addr, "--index", "0", "--timeout", "20",
        "--expect-hash", art.architecture_hash(),
    )  # fmt: skip
    assert flip.flipped
    assert code == 2
    assert "integrity check" in one_error_line(err)
    dropped_after(svc, start, "")
    flip.close()
    honest(svc, art)


def test_wrong_server_key_is_refused(svc):
    wrong = make_keys(svc.tmp, "impostor")["impostor"][1]
    code, out, err = cli(
        "client", "--server", svc.server_addr, "--server-key", wrong, "--dealer-key", svc.dfp,
        "--index", "0", "--json",
    )  # fmt: skip
    assert code == 2
    line = one_error_line(err)
    assert "presented key" in line and wrong in line and svc.sfp in line
    assert json.loads(out)["error"] in line


def test_client_started_dealer_is_refused(svc, art, tmp_path):
    """A client that starts its own (unmodified) dealer gets nothing: (1) the server's client
    port refuses a dealer; (2) a server whose dealer address the attacker's dealer has taken
    refuses it by key, before anything is sent; (3) the client's own dealer is not the one the
    server names, so the attacker's dealer never gets a session."""
    keys = make_keys(tmp_path, "evil")
    port = free_port()
    evil = Proc(
        "dealer", "--key", str(keys["evil"][0]), "--trust-server", svc.sfp,
        "--listen", f"127.0.0.1:{port}", "--timeout", str(TIMEOUT),
    )  # fmt: skip
    try:
        evil.wait_line("dealing on")
        # (1) the server's port serves clients only
        host, sport = svc.server_addr.split(":")
        s, _ = tls.tls_connect(
            host, int(sport), tls.client_context(), pin=svc.sfp, peer="server", timeout=10
        )
        link = tls.Link(s, "server (P0)", 10)
        start = len(svc.server.lines)
        link.send_control({"v": 1, "role": "dealer"})
        assert "clients only" in link.recv_control("answer")["error"]
        link.close()
        dropped_after(svc, start, "connected to the client port")
        # (2) a server configured with the attacker's address but the real dealer's key
        sp = free_port()
        srv2 = Proc(
            "serve", str(RESNET), "--key", str(svc.keys["server"][0]),
            "--listen", f"127.0.0.1:{sp}", "--dealer", f"127.0.0.1:{port}",
            "--dealer-key", svc.dfp, "--output", "logits", "--timeout", str(TIMEOUT),
        )  # fmt: skip
        try:
            srv2.wait_line("serving")
            code, _, err = cli(
                "client", "--server", f"127.0.0.1:{sp}", "--server-key", svc.sfp,
                "--dealer-key", svc.dfp, "--index", "0", "--expect-hash", art.architecture_hash(),
            )  # fmt: skip
            assert code == 2 and "cannot reach its dealer" in one_error_line(err)
            line = srv2.wait_line("dropped")
            assert "presented key" in line and keys["evil"][1] in line
        finally:
            srv2.stop()
        # (3) the attacker's client points its dealer link at its own dealer
        code, _, err = cli(
            "client", "--server", svc.server_addr, "--server-key", svc.sfp,
            "--dealer-key", keys["evil"][1], "--index", "0",
            "--expect-hash", art.architecture_hash(),
        )  # fmt: skip
        assert code == 2 and "refusing before any secret is sent" in one_error_line(err)
        assert not any("session" in ln and "inference" in ln for ln in evil.lines)
    finally:
        evil.stop()
    honest(svc, art)


# ------------------------------------------------------------------------------------ hostile
def test_hostile_oversized_message(svc, art):
    start = len(svc.server.lines)
    link = raw_client(svc)
    link.send([make_header("setup", tag_code("ack", 32, 2), 1 << 30, 1)], "evil").wait()
    dropped_after(svc, start, "protocol mismatch")
    link.close()
    honest(svc, art)


def test_hostile_truncated_message(svc, art):
    start = len(svc.server.lines)
    link = raw_client(svc)
    link.send([make_header("setup", tag_code("ack", 32, 2), 8, 1), b"\0\0\0\0"], "half").wait()
    time.sleep(0.2)
    link.close()
    dropped_after(svc, start, "4 of 8 bytes")
    honest(svc, art)


def test_hostile_garbage(svc, art):
    start = len(svc.server.lines)
    host, port = svc.server_addr.split(":")
    s, _ = tls.tls_connect(
        host, int(port), tls.client_context(), pin=svc.sfp, peer="server", timeout=10
    )
    link = tls.Link(s, "server (P0)", 10)
    link.send([os.urandom(4096)], "garbage").wait()
    dropped_after(svc, start, "hello")
    link.close()
    # and garbage where the TLS handshake should be
    start = len(svc.server.lines)
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(os.urandom(4096))
        dropped_after(svc, start, "TLS handshake failed")
    honest(svc, art)


def test_hostile_out_of_range_batch(svc, art):
    from privquant.serving import ClientSession, _send_request

    start = len(svc.server.lines)
    party, _ = connect_client(svc.server_addr, server_key=svc.sfp, dealer_key=svc.dfp, timeout=10)
    cs = ClientSession(party, log=lambda m: None)
    cs.open()
    _send_request(party, 10**6, True)
    dropped_after(svc, start, "batch of 1000000 samples (limit 32)")
    with pytest.raises(PeerError):
        party.recv(0, (1,), 32, "anything", phase="setup")
    party.transport.close()
    honest(svc, art)


def test_hostile_silent_client(svc, art):
    start = len(svc.server.lines)
    host, port = svc.server_addr.split(":")
    t0 = time.time()
    with socket.create_connection((host, int(port))):
        honest(svc, art)  # served while the silent one waits
        dropped_after(svc, start, "no TLS handshake within")
    assert time.time() - t0 < TIMEOUT + 10


def test_busy_server_refuses_at_once_beyond_max_sessions(tmp_path, art):
    keys = make_keys(tmp_path, "s", "d")
    dport, sport = free_port(), free_port()
    d = Proc("dealer", "--key", str(keys["d"][0]), "--trust-server", keys["s"][1],
             "--listen", f"127.0.0.1:{dport}")  # fmt: skip
    s = Proc("serve", str(RESNET), "--key", str(keys["s"][0]), "--listen", f"127.0.0.1:{sport}",
             "--dealer", f"127.0.0.1:{dport}", "--dealer-key", keys["d"][1],
             "--output", "logits", "--max-sessions", "1")  # fmt: skip
    try:
        d.wait_line("dealing on")
        s.wait_line("serving")
        first = Client(f"127.0.0.1:{sport}", server_key=keys["s"][1], dealer_key=keys["d"][1],
                       log=lambda m: None).open()  # fmt: skip
        t0 = time.time()
        with pytest.raises(PeerError, match="busy"):
            Client(f"127.0.0.1:{sport}", server_key=keys["s"][1], dealer_key=keys["d"][1],
                   log=lambda m: None).open()  # fmt: skip
        assert time.time() - t0 < 5
        x = torch.zeros((1, *art.input_shape), dtype=torch.uint8)
        assert torch.equal(torch.tensor(first.infer(x)["logits_int"]), run_plain(art.program, x))
        first.close()
    finally:
        assert s.stop() == 0
        d.stop()
