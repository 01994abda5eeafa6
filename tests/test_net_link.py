"""The network transport's pieces, in-process: framing limits, keys and pins, links (exact
receives, EOF, deadlines, bounded buffers), TLS pinning and tamper detection, and the
eavesdropper's reconstruction on unencrypted framing (the attack the TLS tests then defeat)."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch
from net_helpers import RESNET, reconstruct

import privquant
from privquant.errors import PeerError, PrivQuantError
from privquant.program import Program, run_plain
from privquant.protocols.transport import framing, tls
from privquant.protocols.transport.channel import CLIENT, DEALER, SERVER, Party
from privquant.protocols.transport.keys import Identity, normalize_pin, pin_matches
from privquant.protocols.transport.net import NetTransport
from privquant.serving import (
    ClientSession,
    Policy,
    check_expected_hash,
    dealer_session,
    server_session,
)


# ------------------------------------------------------------------------------------ framing
def test_json_depth_and_size_limits():
    assert framing.loads_bounded(b'{"a": [1, {"b": "[[[["}]}', "x", limit=100) == {
        "a": [1, {"b": "[[[["}]
    }
    deep = b"[" * 100000 + b"]" * 100000
    with pytest.raises(PeerError, match="nested"):
        framing.loads_bounded(deep, "x", limit=1 << 20)
    with pytest.raises(PeerError, match="limit"):
        framing.loads_bounded(b"[" + b"1," * 1000 + b"1]", "x", limit=100)
    for bad in (b"\xff\xfe", b"{", b"nan-ish", b""):
        with pytest.raises(PeerError, match="not valid JSON"):
            framing.loads_bounded(bad, "x", limit=100)


@pytest.mark.parametrize(
    "text",
    ["foo", "http://1.2.3.4:5", "file:///nonexistent/x", "host:0", "host:70000", "", ":5", "a b:1"],
)
def test_bad_addresses_are_one_line_errors(text):
    with pytest.raises(PrivQuantError, match=r"HOST:PORT|port|only tcp"):
        framing.parse_address(text)


def test_good_addresses():
    assert framing.parse_address("tcp://127.0.0.1:29500") == ("127.0.0.1", 29500)
    assert framing.parse_address("[::1]:7") == ("::1", 7)
    assert framing.parse_address("server.example:443") == ("server.example", 443)


def test_control_frame_length_checked_before_reading():
    with pytest.raises(PeerError, match="limit"):
        framing.decode_length((1 << 31).to_bytes(4, "little"), "hello")
    with pytest.raises(PeerError, match="limit"):
        framing.decode_length(b"\0\0\0\0", "hello")


# ------------------------------------------------------------------------------------ keys
def test_pins_and_key_files(tmp_path):
    ident = Identity.generate()
    fp = ident.fingerprint
    assert len(fp) == 64
    assert pin_matches(normalize_pin(fp[:32], "k"), fp)
    assert not pin_matches(normalize_pin("0" * 32, "k"), fp)
    with pytest.raises(PrivQuantError, match="32 to 64 hex"):
        normalize_pin(fp[:16], "k")  # too short to be a key pin
    with pytest.raises(PrivQuantError):
        normalize_pin("zz" * 20, "k")
    path = tmp_path / "s.key"
    ident.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert Identity.load(path).fingerprint == fp
    with pytest.raises(PrivQuantError, match="refusing to overwrite"):
        ident.save(path)
    path.chmod(0o644)
    with pytest.raises(PrivQuantError, match="readable by others"):
        Identity.load(path)
    fpfile = tmp_path / "s.fp"
    fpfile.write_text(fp + "\n")
    assert normalize_pin(str(fpfile), "k") == fp
    junk = tmp_path / "j.key"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(PrivQuantError, match="not an unencrypted PEM"):
        Identity.load(junk)


def test_expect_hash_prefix_rules():
    h = "ab" * 32
    assert check_expected_hash(None, h, "m") is None
    assert check_expected_hash(h[:16], h, "m") is None
    assert check_expected_hash(h.upper(), h, "m") is None
    assert "16 to 64 hex" in check_expected_hash(h[:15], h, "m")
    msg = check_expected_hash("cd" * 8, h, "m")
    assert h in msg and "cd" * 8 in msg  # both in full


# ------------------------------------------------------------------------------------ links
def _pair(timeout=5.0):
    a, b = socket.socketpair()
    return tls.Link(a, "server (P0)", timeout), tls.Link(b, "client (P1)", timeout)


def test_link_exact_receive_and_eof_mid_payload():
    a, b = _pair()
    a.send([b"hello", np.arange(10, dtype=np.uint8)], "m").wait()
    assert b.recv_exact(5, "x") == b"hello"
    assert list(b.recv_array(10, "y")) == list(range(10))
    a.send([b"abc"], "m").wait()
    a.close()
    with pytest.raises(PeerError, match=r"closed the connection .*\(3 of 8 bytes"):
        b.recv_exact(8, "the payload")
    b.close()


def test_link_deadline():
    a, b = _pair(timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(PeerError, match=r"timed out after 0\.5 s"):
        b.recv_exact(4, "something")
    assert time.monotonic() - t0 < 2.0
    a.close()
    b.close()


def test_link_receive_buffer_is_bounded():
    """A peer that floods us while we do not read costs at most RX_LIMIT (+ one chunk)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    link = tls.Link(b, "client (P1)", 5.0)
    junk = b"\0" * (1 << 20)
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 2.0:
        try:
            sent += a.send(junk)
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(0.2)
    # the link stopped reading at its bound, so the kernel's flow control stopped the sender
    assert len(link._rx) == tls.RX_LIMIT
    assert sent < tls.RX_LIMIT + (4 << 20)
    link.close()
    a.close()


def test_header_length_checked_before_payload_is_read():
    """A header announcing 1 GB is rejected by the receiver's expectation; nothing is read."""
    a, b = _pair()
    p1 = Party(CLIENT, NetTransport(CLIENT, {SERVER: b}))
    from privquant.protocols.transport.channel import make_header, tag_code

    a.send([make_header("setup", tag_code("ack", 32, 2), 1 << 30, 1)], "evil").wait()
    with pytest.raises(PeerError, match="protocol mismatch"):
        p1.recv(SERVER, (2,), 32, "ack", phase="setup")
    a.close()
    b.close()


# ------------------------------------------------------------------------------------ TLS
def _tls_pair(server_ident, pin, *, proxy=None):
    lsock = tls.listen("127.0.0.1", 0)
    port = lsock.getsockname()[1]
    out = {}

    def accept():
        raw, _ = lsock.accept()
        try:
            out["s"] = tls.tls_accept(raw, tls.server_context(server_ident), 5.0)
        except PeerError as e:
            out["err"] = e

    t = threading.Thread(target=accept)
    t.start()
    try:
        c, _ = tls.tls_connect(
            "127.0.0.1", proxy or port, tls.client_context(), pin=pin, peer="server", timeout=5
        )
    finally:
        t.join(10)
        lsock.close()
    return c, out.get("s"), port


def test_tls_pin_accepts_right_key_and_refuses_wrong_key():
    ident = Identity.generate()
    c, s, _ = _tls_pair(ident, ident.fingerprint[:32])
    assert c.version() == "TLSv1.3"
    assert c.get_channel_binding("tls-unique") == s.get_channel_binding("tls-unique")
    c.close()
    s.close()
    with pytest.raises(PeerError, match=r"presented key .* but you pinned"):
        _tls_pair(ident, Identity.generate().fingerprint)


def test_tls_connect_to_silent_listener_and_non_tls_port_is_bounded():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)  # accepts (kernel backlog) but never speaks
    t0 = time.monotonic()
    with pytest.raises(PeerError, match="did not complete a TLS handshake within 1 s"):
        tls.tls_connect(
            "127.0.0.1", lsock.getsockname()[1], tls.client_context(), pin="0" * 32,
            peer="server", timeout=1.0,
        )  # fmt: skip
    assert time.monotonic() - t0 < 3
    lsock.close()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    p = free.getsockname()[1]
    free.close()
    with pytest.raises(PeerError, match="connection refused"):
        tls.tls_connect(
            "127.0.0.1", p, tls.client_context(), pin="0" * 32, peer="server", timeout=2
        )


# ------------------------------------------------------------------------------------ attack
def _tapped_pair():
    """Two connected sockets joined through a relay that records each direction."""
    a0, a1 = socket.socketpair()
    b0, b1 = socket.socketpair()
    rec = {"ab": bytearray(), "ba": bytearray()}

    def pump(src, dst, buf):
        while True:
            try:
                d = src.recv(65536)
            except OSError:
                d = b""
            if not d:
                dst.close()
                return
            buf += d
            dst.sendall(d)

    threading.Thread(target=pump, args=(a1, b1, rec["ab"]), daemon=True).start()
    threading.Thread(target=pump, args=(b1, a1, rec["ba"]), daemon=True).start()
    return a0, b0, rec


def test_eavesdropper_reconstructs_input_and_weights_from_unencrypted_framing():
    """The attack of the issue, on this repository's framing without TLS: it recovers the
    client's image and the server's first-layer weights exactly. The TLS test in
    test_net_services runs the same reconstruction on real recorded traffic and fails."""
    art = privquant.load(RESNET)
    prog = art.program
    pub = Program.from_public_dict(prog.public_dict())
    x = torch.randint(0, 256, (1, *prog.input_shape), dtype=torch.uint8)
    s01, c01, rec01 = _tapped_pair()  # server <-> client
    s02, d02, rec02 = _tapped_pair()  # server <-> dealer
    c12, d12, rec12 = _tapped_pair()  # client <-> dealer
    links = {
        SERVER: {CLIENT: tls.Link(s01, "client (P1)", 60), DEALER: tls.Link(s02, "dealer (D)", 60)},
        CLIENT: {SERVER: tls.Link(c01, "server (P0)", 60), DEALER: tls.Link(c12, "dealer (D)", 60)},
        DEALER: {
            SERVER: tls.Link(d02, "server (P0)", 60),
            CLIENT: tls.Link(d12, "client (P1)", 60),
        },
    }
    parties = {r: Party(r, NetTransport(r, links[r])) for r in links}
    out, errs = {}, []

    def run(r):
        try:
            if r == SERVER:
                server_session(parties[r], prog, Policy(output="logits", max_batch=4))
            elif r == DEALER:
                dealer_session(parties[r])
            else:
                cs = ClientSession(parties[r], log=lambda m: None)
                cs.open()
                out["logits"] = cs.infer(x)
                cs.close()
        except Exception as e:  # pragma: no cover - reported below
            errs.append(e)
        finally:
            parties[r].close()

    ts = [threading.Thread(target=run, args=(r,)) for r in (SERVER, CLIENT, DEALER)]
    [t.start() for t in ts]
    [t.join(120) for t in ts]
    assert not errs, errs
    assert torch.equal(out["logits"], run_plain(prog, x))
    got_x, got_w = reconstruct(
        pub, 1, bytes(rec01["ab"]), bytes(rec01["ba"]), bytes(rec12["ba"]), bytes(rec02["ba"])
    )
    conv = next(op for op in prog.ops if op.kind == "conv2d")
    assert torch.equal(got_x, x.to(torch.int64))
    assert torch.equal(got_w, torch.as_tensor(conv.arrays["weight"].astype(np.int64)))
