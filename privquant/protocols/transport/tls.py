"""TLS 1.3 links with pinned keys, and the :class:`Link` that moves a link's bytes.

Security (see :mod:`privquant.serving` for who connects to whom):

* every link is TLS 1.3 only (Python's ``ssl`` / OpenSSL; AEAD ciphers only; no session
  tickets, no resumption); the listening role presents a self-signed certificate for its
  Ed25519 identity key (:mod:`privquant.protocols.transport.keys`);
* the connecting role does not use certificate chains: right after the handshake it computes
  the fingerprint of the key in the peer's certificate and compares it with its pin, before a
  single byte of its own is sent. TLS 1.3 has the server sign the whole handshake transcript
  (CertificateVerify), which OpenSSL checks whatever the verify mode, so a matching pin proves
  the peer holds the pinned private key;
* a connecting role that must be authenticated too (the server towards its dealer) signs
  ``context || tls-unique || responder fingerprint`` with its identity key in its first control
  frame (:func:`auth_message`): ``tls-unique`` (the client Finished message, which in TLS 1.3
  is a MAC over the full handshake, so unique per connection and equal at both ends) binds the
  signature to this very connection, so it cannot be replayed or relayed.

:class:`Link` owns one connected socket (TLS or, for the local all-in-one run, a plain
``socketpair``) and one I/O thread, the only thread that touches the socket (an OpenSSL
connection must not be used from two threads at once). The thread writes queued messages
and reads into a receive buffer of at most :data:`RX_LIMIT` bytes: when the application does
not consume, the thread stops reading and TCP flow control holds the peer back, so a flooding
peer costs us at most ``RX_LIMIT`` bytes. Every wait of the application (a receive, a send's
completion) has a deadline; a peer that closes, resets or fails TLS's integrity check
(``bad record mac``: a flipped byte) ends the link with one :class:`PeerError` line.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import socket
import ssl
import threading
import time

import numpy as np

from privquant.errors import PeerError
from privquant.protocols.transport import framing
from privquant.protocols.transport.channel import SendHandle
from privquant.protocols.transport.keys import (
    Identity,
    load_into_context,
    peer_fingerprint,
    pin_matches,
)

RX_LIMIT = 4 << 20  # receive buffer bound per link (bytes)
CHUNK = 1 << 18  # bytes moved per socket call
AUTH_CONTEXT = b"privquant/v1 link authentication\x00"


# ------------------------------------------------------------------------------------ contexts
def server_context(identity: Identity) -> ssl.SSLContext:
    """TLS 1.3 context of a listening role presenting ``identity``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    ctx.num_tickets = 0
    ctx.verify_mode = ssl.CERT_NONE  # connecting roles authenticate in-band (auth_message)
    load_into_context(ctx, identity)
    return ctx


def client_context() -> ssl.SSLContext:
    """TLS 1.3 context of a connecting role (the peer key is checked by pin after the handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def auth_message(sock: ssl.SSLSocket, responder_fp: str, role: str) -> bytes:
    """What a connecting ``role`` signs to authenticate on this TLS connection."""
    binding = sock.get_channel_binding("tls-unique")
    if not binding:
        raise PeerError("the TLS connection has no channel binding")
    return AUTH_CONTEXT + role.encode() + b"\x00" + binding + bytes.fromhex(responder_fp)


def _nodelay(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tls_connect(
    host: str, port: int, ctx: ssl.SSLContext, *, pin: str, peer: str, timeout: float
) -> tuple[ssl.SSLSocket, str]:
    """Connect, run the TLS handshake and check the peer's key against ``pin`` (all within
    ``timeout``). Returns the socket and the peer's full fingerprint."""
    where = f"{host}:{port}"
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise PeerError(f"no answer from the {peer} at {where} within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise PeerError(f"could not connect to the {peer} at {where}: connection refused") from None
    except OSError as e:
        raise PeerError(f"could not connect to the {peer} at {where}: {e.strerror or e}") from None
    _nodelay(raw)
    raw.settimeout(timeout)
    try:
        s = ctx.wrap_socket(raw, server_hostname=None)
    except TimeoutError:
        raw.close()
        raise PeerError(
            f"the {peer} at {where} did not complete a TLS handshake within {timeout:g} s "
            "(is it a PrivQuant service?)"
        ) from None
    except (ssl.SSLError, OSError) as e:
        raw.close()
        raise PeerError(
            f"TLS handshake with the {peer} at {where} failed ({_reason(e)}); "
            "is it a PrivQuant service?"
        ) from None
    fp = peer_fingerprint(s.getpeercert(binary_form=True))
    if not fp or not pin_matches(pin, fp):
        s.close()
        raise PeerError(
            f"the {peer} at {where} presented key {fp or '(none)'}, but you pinned {pin}: "
            "refusing to talk to it (wrong key, or someone in the middle)"
        )
    return s, fp


def tls_accept(raw: socket.socket, ctx: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """Server side of the handshake on an accepted socket, within ``timeout``."""
    _nodelay(raw)
    raw.settimeout(timeout)
    try:
        return ctx.wrap_socket(raw, server_side=True)
    except TimeoutError:
        raw.close()
        raise PeerError(f"no TLS handshake within {timeout:g} s") from None
    except (ssl.SSLError, OSError) as e:
        raw.close()
        raise PeerError(f"TLS handshake failed ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return e.reason.lower().replace("_", " ")
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__)[:200]


def listen(host: str, port: int, backlog: int = 64) -> socket.socket:
    """A listening TCP socket on ``host:port`` (PrivQuantError-free: PeerError on failure)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr)
        s.listen(backlog)
    except OSError as e:
        raise PeerError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return s


# ------------------------------------------------------------------------------------ link
class _Sent(SendHandle):
    def __init__(self, link: Link, end: int, what: str):
        self.link, self.end, self.what = link, end, what

    def done(self) -> bool:
        return self.link._sent >= self.end or self.link._error is not None

    def wait(self) -> None:
        self.link.wait_sent(self.end, self.what)


class Link:
    """One connected socket, an I/O thread, a bounded receive buffer, deadlines.

    ``peer`` names the other side in errors (e.g. ``"client (P1)"``); ``timeout`` bounds every
    wait of the application. ``bytes_in``/``bytes_out`` count the application bytes moved.
    """

    def __init__(self, sock: socket.socket, peer: str, timeout: float):
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        self.sock, self.peer, self.timeout = sock, peer, timeout
        sock.setblocking(False)
        self._cv = threading.Condition()
        self._rx = bytearray()
        self._tx: collections.deque[memoryview] = collections.deque()
        self._queued = 0  # bytes ever queued
        self._sent = 0  # bytes ever handed to the socket
        self.bytes_in = 0
        self._eof = False
        self._error: str | None = None
        self._closing = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fd_lock = threading.Lock()
        self._closed = False
        self._buf = bytearray(CHUNK)
        self._thread = threading.Thread(
            target=self._run, name=f"privquant-link-{peer}", daemon=True
        )
        self._thread.start()

    @property
    def bytes_out(self) -> int:
        return self._sent

    # ------------------------------------------------------------------ I/O thread
    def _wake(self) -> None:
        with self._fd_lock:  # never write to a closed (and maybe reused) descriptor
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(self._wake_w, b"x")

    def _fail(self, msg: str) -> None:
        with self._cv:
            if self._error is None:
                self._error = msg
            self._cv.notify_all()

    def _read_some(self) -> bool:
        progressed = False
        while True:
            with self._cv:
                room = RX_LIMIT - len(self._rx)
                if room <= 0 or self._eof:
                    return progressed
            try:
                n = self.sock.recv_into(self._buf, min(room, CHUNK))
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return progressed
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
                n = 0
            except ssl.SSLError as e:
                self._fail(
                    f"the connection to the {self.peer} failed TLS's integrity check "
                    f"({_reason(e)}): the data was modified in transit"
                )
                return True
            except OSError as e:
                self._fail(f"the connection to the {self.peer} broke ({_reason(e)})")
                return True
            with self._cv:
                if n == 0:
                    self._eof = True
                else:
                    self._rx += memoryview(self._buf)[:n]
                    self.bytes_in += n
                self._cv.notify_all()
            if n == 0:
                return True
            progressed = True

    def _write_some(self) -> bool:
        progressed = False
        while True:
            with self._cv:
                if not self._tx:
                    return progressed
                head = self._tx[0]
            try:
                n = self.sock.send(head[:CHUNK])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return progressed
            except (ssl.SSLError, OSError) as e:
                self._fail(f"sending to the {self.peer} failed ({_reason(e)})")
                return True
            with self._cv:
                if n >= len(head):
                    self._tx.popleft()
                else:
                    self._tx[0] = head[n:]
                self._sent += n
                self._cv.notify_all()
            progressed = True

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    if self._error is not None or (self._closing and not self._tx):
                        return
                    want_write = bool(self._tx)
                    want_read = not self._eof and len(self._rx) < RX_LIMIT
                progressed = (self._read_some() if want_read else False) | (
                    self._write_some() if want_write else False
                )
                if progressed:
                    continue
                rl = [self._wake_r] + ([self.sock] if want_read else [])
                wl = [self.sock] if want_write else []
                r, _, _ = select.select(rl, wl, [], 1.0)
                if self._wake_r in r:
                    with contextlib.suppress(BlockingIOError, OSError):
                        while os.read(self._wake_r, 4096):
                            pass
        except Exception as e:  # pragma: no cover - defensive: never die silently
            self._fail(f"link to the {self.peer} failed: {type(e).__name__}: {e}")
        finally:
            with self._cv:
                self._cv.notify_all()

    # ------------------------------------------------------------------ application side
    def send(self, parts, what: str) -> SendHandle:
        """Queue ``parts`` (bytes-like) for sending; returns a handle to wait for completion."""
        with self._cv:
            if self._error is not None:
                raise PeerError(f"cannot send {what}: {self._error}")
            if self._closing:
                raise PeerError(f"cannot send {what}: the link to the {self.peer} is closed")
            for p in parts:
                mv = memoryview(p).cast("B")
                if len(mv):
                    self._tx.append(mv)
                    self._queued += len(mv)
            end = self._queued
        self._wake()
        return _Sent(self, end, what)

    def wait_sent(self, end: int, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        with self._cv:
            while self._sent < end:
                if self._error is not None:
                    raise PeerError(f"sending {what} failed: {self._error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(
                        f"the {self.peer} did not take {what} within {self.timeout:g} s"
                    )
                self._cv.wait(left)

    def recv_into(self, out: memoryview, what: str, deadline: float | None = None) -> None:
        """Fill ``out`` exactly from the stream, or raise PeerError (EOF, error, deadline)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        n, got = len(out), 0
        with self._cv:
            while got < n:
                if self._rx:
                    k = min(len(self._rx), n - got)
                    out[got : got + k] = self._rx[:k]
                    del self._rx[:k]
                    got += k
                    self._wake()  # room freed: the I/O thread may read again
                    continue
                if self._error is not None:
                    raise PeerError(f"{self._error} (while waiting for {what})")
                if self._eof:
                    raise PeerError(
                        f"the {self.peer} closed the connection while we waited for {what} "
                        f"({got} of {n} bytes received)"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(
                        f"timed out after {self.timeout:g} s waiting for {what} from the "
                        f"{self.peer} ({got} of {n} bytes received)"
                    )
                self._cv.wait(left)

    def recv_exact(self, n: int, what: str, deadline: float | None = None) -> bytes:
        out = bytearray(n)
        self.recv_into(memoryview(out), what, deadline)
        return bytes(out)

    def recv_array(self, n: int, what: str) -> np.ndarray:
        out = np.empty(n, dtype=np.uint8)
        self.recv_into(memoryview(out), what)
        return out

    # control frames: length-prefixed JSON, before any Party message
    def send_control(self, obj: dict, what: str = "a control frame") -> None:
        self.send([framing.encode_control(obj)], what).wait()

    def recv_control(self, what: str, limit: int = framing.CONTROL_LIMIT) -> dict:
        deadline = time.monotonic() + self.timeout
        n = framing.decode_length(self.recv_exact(4, what, deadline), what, limit)
        obj = framing.loads_bounded(self.recv_exact(n, what, deadline), what, limit=limit)
        if not isinstance(obj, dict):
            raise PeerError(f"{what} is not a JSON object")
        return obj

    @property
    def error(self) -> str | None:
        return self._error

    def close(self, flush_timeout: float = 2.0) -> None:
        """Stop the I/O thread (after sending what is queued, for at most ``flush_timeout`` s)
        and close the socket. Idempotent: descriptors are closed exactly once."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._closing = True
        self._wake()
        self._thread.join(flush_timeout)
        if self._thread.is_alive():
            self._fail("closed")
            self._wake()
            self._thread.join(1.0)
        with self._cv:  # receivers still waiting (an aborted session) fail at once
            if self._error is None:
                self._error = f"the link to the {self.peer} was closed"
            self._cv.notify_all()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._thread.is_alive():
            return  # the I/O thread still selects on the pipe: leave it open (daemon thread)
        with self._fd_lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1
