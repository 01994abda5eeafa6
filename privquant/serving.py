"""Serving: the session protocol of the three roles, and the long-running network services.

Who talks to whom (dealer preprocessing; ``ot`` mode has no dealer and skips every dealer step)::

    client --TLS--> server  (the client pins the server's key; the server serves anyone)
    server --TLS--> dealer  (the server pins its dealer's key; the dealer pins the servers it
                             serves: the server signs the connection's tls-unique binding)
    client --TLS--> dealer  (the client pins the dealer's key; the dealer admits it only with
                             the one-time session token the server registered for this session)

Link set-up (control frames, :mod:`privquant.protocols.transport.framing`):

1. client -> server hello ``{"v", "role": "client"}``. The server refuses other roles, and
   refuses with ``busy`` when ``max_sessions`` sessions run.
2. server -> dealer hello ``{"v", "role": "server", "session", "token", "public_key",
   "signature"}``; the dealer checks the key against its ``--trust-server`` pins and the
   signature over this connection's binding, and answers ``ok``.
3. server -> client ``{"ok", "session", "token", "preprocessing", "output", "max_batch",
   "dealer": {"address", "fingerprint"}}``. The client refuses unless the dealer named is the
   one it pinned, then connects to that dealer and sends ``{"role": "client", "session",
   "token"}``; the dealer admits one client per registered session (the token is 256 random
   bits the server sent only to its client, over TLS), so it sends P1's corrections only to
   the client of *this* server's session.

Session protocol (on :class:`~privquant.protocols.transport.channel.Party`, identical on the
network transport and on gloo; scope ``(handshake)``, setup phase, before any secret moves):

1. server -> client (and -> dealer): the offer, JSON ``{"program": public program, "policy":
   {"preprocessing", "output", "max_batch"}}`` (length first, at most :data:`OFFER_LIMIT` bytes,
   nesting at most 32 levels, then :func:`check_program_limits`);
2. client -> server (and -> dealer): acknowledgement ``(status, 0)`` and the 32-byte
   architecture hash it computed; the server checks the hash is its own;
3. seeds and every protocol's setup, once (:class:`privquant.runtime.Session`);
4. per inference, client -> server (and -> dealer), scope ``(session)``: the number of samples
   ``n`` (``1 <= n <= max_batch``, checked by server and dealer); ``n = 0`` ends the session.
   Then the inference's offline and online phases.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from privquant._memory import peak_rss_mb
from privquant.errors import PeerError, PrivQuantError
from privquant.ops.argmax import output_program, plain_topk, policy_k
from privquant.program import Program, check_input, output_logits
from privquant.protocols.transport import framing, tls
from privquant.protocols.transport.channel import CLIENT, DEALER, PARTY_NAMES, SERVER, Party
from privquant.protocols.transport.keys import (
    Identity,
    fingerprint_of,
    normalize_pin,
    pin_matches,
    verify_signature,
)
from privquant.protocols.transport.net import NetTransport
from privquant.report import HANDSHAKE_SCOPE
from privquant.runtime import OUTPUT_POLICIES, PREPROCESSING_MODES, Session

VERSION = 1
GO, REFUSED = 0, 1
SESSION_SCOPE = "(session)"
DEFAULT_TIMEOUT = 60.0
DEFAULT_SERVER_PORT = 29500
DEFAULT_DEALER_PORT = 29501
DEFAULT_MAX_BATCH = 32
OFFER_LIMIT = 64 << 20
HASH_BYTES = 32
MIN_HASH_HEX = 16
DEFAULT_OUTPUT = "label" if "label" in OUTPUT_POLICIES else "logits"

# what a public program may ask of the client and the dealer (a hostile server must not make
# them allocate without bound): ops, per-sample elements per tensor, weight elements per layer
MAX_OPS = 4096
MAX_TENSOR_ELEMS = 1 << 24
MAX_WEIGHT_ELEMS = 1 << 26
MAX_RING_BITS = 64


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ policy
@dataclass(frozen=True)
class Policy:
    """What the server offers: preprocessing mode, output policy, largest batch per inference."""

    preprocessing: str = "dealer"
    output: str = DEFAULT_OUTPUT
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self):
        if self.preprocessing not in ("dealer", "ot"):
            raise PrivQuantError(f"preprocessing must be dealer or ot, not {self.preprocessing!r}")
        policy_k(self.output)  # label, topk:K (K >= 1) or logits
        if not isinstance(self.max_batch, int) or not 1 <= self.max_batch <= 1 << 16:
            raise PrivQuantError(f"max batch must be in 1..65536, got {self.max_batch!r}")

    @property
    def needs_dealer(self) -> bool:
        return self.preprocessing == "dealer"

    def as_dict(self) -> dict:
        return {
            "preprocessing": self.preprocessing,
            "output": self.output,
            "max_batch": self.max_batch,
        }

    @staticmethod
    def from_dict(d) -> Policy:
        if not isinstance(d, dict):
            raise PeerError("the offered policy is not an object")
        try:
            return Policy(str(d["preprocessing"]), str(d["output"]), int(d["max_batch"]))
        except (KeyError, TypeError, ValueError, PrivQuantError) as e:
            raise PeerError(f"the offered policy is invalid: {e}") from None

    def check_supported(self) -> None:
        if self.preprocessing not in PREPROCESSING_MODES:
            raise PrivQuantError(
                f"preprocessing {self.preprocessing!r} is not available in this build"
            )
        if self.output.split(":")[0] not in OUTPUT_POLICIES:
            raise PrivQuantError(
                f"output policy {self.output!r} is not available in this build "
                f"(available: {', '.join(OUTPUT_POLICIES)})"
            )


# ------------------------------------------------------------------------------------ hashes
def check_expected_hash(expect: str | None, digest: str, model: str) -> str | None:
    """None if ``digest`` is acceptable, else the refusal message (hashes printed in full).

    ``expect`` may be an unambiguous prefix of at least 16 hex digits."""
    if expect is None:
        return None
    e = expect.strip().lower()
    if len(e) < MIN_HASH_HEX or len(e) > 64 or any(c not in "0123456789abcdef" for c in e):
        return (
            f"--expect-hash must be {MIN_HASH_HEX} to 64 hex digits of an architecture hash, "
            f"got {expect!r}"
        )
    if digest.startswith(e):
        return None
    return (
        f"the server offers model {model!r} with architecture hash {digest}, but you expected "
        f"{e}; refusing before any secret is sent"
    )


def validate_hash_arg(expect: str | None) -> None:
    """Raise for a malformed --expect-hash before connecting anywhere."""
    if expect is not None:
        msg = check_expected_hash(expect, "", "")
        if msg is not None and msg.startswith("--expect-hash"):
            raise PrivQuantError(msg)


def check_program_limits(program: Program) -> None:
    """Refuse a public program that would make us allocate without bound (PeerError)."""
    from privquant.program import ring_bits

    if len(program.ops) > MAX_OPS:
        raise PeerError(f"the offered program has {len(program.ops)} ops (limit {MAX_OPS})")
    for t in program.tensors.values():
        if any((not isinstance(d, int)) or d < 1 for d in t.shape):
            raise PeerError(f"the offered program has a tensor of shape {t.shape}")
        if int(np.prod(t.shape, dtype=np.float64)) > MAX_TENSOR_ELEMS:
            raise PeerError(f"the offered program has a tensor of {t.shape} elements per sample")
    for op in program.ops:
        ws = op.attrs.get("weight_shape")
        if ws is not None:
            if not isinstance(ws, list) or any(not isinstance(d, int) or d < 1 for d in ws):
                raise PeerError(f"the offered program declares weight shape {ws!r}")
            if float(np.prod(ws, dtype=np.float64)) > MAX_WEIGHT_ELEMS:
                raise PeerError(f"the offered program declares a weight of shape {ws}")
    try:
        rings = ring_bits(program)
    except (PrivQuantError, ValueError, KeyError, TypeError, IndexError) as e:
        raise PeerError(f"the offered program is inconsistent: {e}") from None
    if max(rings.values(), default=0) > MAX_RING_BITS:
        raise PeerError("the offered program needs rings wider than 64 bits")


# ------------------------------------------------------------------------------------ messages
def _send_bytes(party: Party, dst: int, data: bytes, tag: str) -> None:
    party.send(dst, torch.tensor([len(data)]), 32, f"{tag}.len", phase="setup")
    party.send_raw(dst, np.frombuffer(bytearray(data), dtype=np.uint8), tag, phase="setup")


def _recv_bytes(party: Party, src: int, tag: str, limit: int) -> bytes:
    n = int(party.recv(src, (1,), 32, f"{tag}.len", phase="setup")[0])
    if not 0 < n <= limit:
        raise PeerError(f"the {PARTY_NAMES[src]} announced a {tag} of {n} bytes (limit {limit})")
    return party.recv_raw(src, n, tag, phase="setup").tobytes()


def _send_ack(party: Party, dst: int, status: int, digest: str) -> None:
    party.send(dst, torch.tensor([status, 0]), 32, "ack", phase="setup")
    raw = bytes.fromhex(digest) if len(digest) == 2 * HASH_BYTES else bytes(HASH_BYTES)
    party.send_raw(dst, np.frombuffer(bytearray(raw), dtype=np.uint8), "ack.hash", phase="setup")


def _recv_ack(party: Party) -> tuple[int, str]:
    status, _ = (int(v) for v in party.recv(CLIENT, (2,), 32, "ack", phase="setup"))
    h = party.recv_raw(CLIENT, HASH_BYTES, "ack.hash", phase="setup")
    return status, h.tobytes().hex()


def _send_request(party: Party, n: int, dealer: bool) -> None:
    with party.scope(SESSION_SCOPE):
        for dst in (SERVER, DEALER) if dealer else (SERVER,):
            party.send(dst, torch.tensor([n]), 32, "request", phase="setup")


def _recv_request(party: Party, max_batch: int) -> int:
    with party.scope(SESSION_SCOPE):
        n = int(party.recv(CLIENT, (1,), 32, "request", phase="setup")[0])
    if not 0 <= n <= max_batch:
        raise PeerError(f"the client asked for a batch of {n} samples (limit {max_batch})")
    return n


def offer_blob(program: Program, policy: Policy) -> bytes:
    import json

    doc = {"program": program.public_dict(), "policy": policy.as_dict()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _receive_offer(party: Party) -> tuple[Program, Policy]:
    blob = _recv_bytes(party, SERVER, "program", OFFER_LIMIT)
    doc = framing.loads_bounded(blob, "the offered program", limit=OFFER_LIMIT)
    if not isinstance(doc, dict) or "program" not in doc or "policy" not in doc:
        raise PeerError("the server's offer is not a PrivQuant offer")
    policy = Policy.from_dict(doc["policy"])
    try:
        program = Program.from_public_dict(doc["program"])
    except PrivQuantError as e:
        raise PeerError(f"the server offered a malformed program: {e}") from None
    except Exception as e:  # any other failure of a hostile document is the peer's fault
        raise PeerError(f"the server offered a malformed program ({type(e).__name__})") from None
    check_program_limits(program)
    return program, policy


# ------------------------------------------------------------------------------------ roles
@dataclass
class SessionSummary:
    """What a role reports at the end of a session."""

    role: str
    inferences: int = 0
    samples: int = 0
    seconds: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    scopes: dict = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "peak_rss_mb": peak_rss_mb(),  # this process's peak so far
            "role": self.role,
            "inferences": self.inferences,
            "samples": self.samples,
            "batches": self.batches,
            "seconds": self.seconds,
            "stats": self.stats,
            "scopes": self.scopes,
            **self.extra,
        }


def server_session(
    party: Party, program: Program, policy: Policy, *, backend: str = "privquant"
) -> SessionSummary:
    """The server's side of one session (see the module docstring)."""
    t0 = time.perf_counter()
    digest = program.architecture_hash()
    blob = offer_blob(program, policy)
    with party.scope(HANDSHAKE_SCOPE):
        _send_bytes(party, CLIENT, blob, "program")
        if policy.needs_dealer:
            _send_bytes(party, DEALER, blob, "program")
        status, echoed = _recv_ack(party)
    if status != GO:
        raise PeerError("the client refused the session (model or policy); no secret was shared")
    if echoed != digest:
        raise PeerError(
            f"the client acknowledged architecture hash {echoed}, not this model's {digest}; "
            "no secret was shared"
        )
    sess = Session(
        party, program, backend=backend, preprocessing=policy.preprocessing, output=policy.output
    )
    sess.setup()
    out = SessionSummary("server")
    while (n := _recv_request(party, policy.max_batch)) > 0:
        sess.infer(n)
        out.inferences += 1
        out.samples += n
        out.batches.append(n)
    party.flush()
    res = sess.result()
    out.seconds = {**res.seconds, "total": time.perf_counter() - t0}
    out.stats, out.scopes = res.stats, res.scopes
    out.extra["architecture_hash"] = digest
    return out


def dealer_session(party: Party, *, backend: str = "privquant") -> SessionSummary:
    """The dealer's side of one session: learn the public program, deal per request."""
    t0 = time.perf_counter()
    with party.scope(HANDSHAKE_SCOPE):
        program, policy = _receive_offer(party)
        status, _ = _recv_ack(party)
    if status != GO:
        raise PeerError("the client refused the session; the dealer stops")
    sess = Session(
        party, program, backend=backend, preprocessing=policy.preprocessing, output=policy.output
    )
    sess.setup()
    out = SessionSummary("dealer")
    while (n := _recv_request(party, policy.max_batch)) > 0:
        sess.infer(n)
        out.inferences += 1
        out.samples += n
        out.batches.append(n)
    party.flush()
    res = sess.result()
    out.seconds = {**res.seconds, "total": time.perf_counter() - t0}
    out.stats, out.scopes = res.stats, res.scopes
    return out


class ClientSession:
    """The client's side of one session, driven step by step (used by :class:`Client`).

    ``open()`` receives and checks the offer, acknowledges it and runs the setup; ``infer(x)``
    runs as many inferences as ``x`` needs (chunks of at most ``max_batch``, or ``chunk``);
    ``close()`` ends the session (request 0).
    """

    def __init__(
        self,
        party: Party,
        *,
        expect_hash: str | None = None,
        backend: str = "privquant",
        progress: bool = False,
        chunk: int | None = None,
        log: Callable[[str], None] = _stderr,
        check: Callable[[Program, Policy], str | None] | None = None,
    ):
        self.party, self.expect_hash, self.backend = party, expect_hash, backend
        self.progress, self.chunk, self.log, self.check = progress, chunk, log, check
        self.program: Program | None = None
        self.policy: Policy | None = None
        self.digest = ""
        self.session: Session | None = None
        self.summary = SessionSummary("client")
        self._t0 = time.perf_counter()
        self._ended = False

    def open(self) -> None:
        party = self.party
        with party.scope(HANDSHAKE_SCOPE):
            program, policy = _receive_offer(party)
            digest = program.architecture_hash()
            problem = check_expected_hash(self.expect_hash, digest, program.model)
            if problem is None and self.check is not None:
                problem = self.check(program, policy)
            if problem is None:
                try:
                    policy.check_supported()
                    output_program(program, policy.output)
                except PrivQuantError as e:
                    problem = f"{e}; refusing before any secret is sent"
            for dst in (SERVER, DEALER) if policy.needs_dealer else (SERVER,):
                _send_ack(party, dst, REFUSED if problem else GO, digest)
        if problem:
            raise PeerError(problem)
        if self.expect_hash is None:
            self.log(
                f"privquant: warning: not checking which model the server runs (it offers "
                f"{program.model!r}, architecture hash {digest}); pass --expect-hash"
            )
        self.program, self.policy, self.digest = program, policy, digest
        self.session = Session(
            party,
            program,
            backend=self.backend,
            preprocessing=policy.preprocessing,
            output=policy.output,
            progress=self.progress,
        )
        self.session.setup()

    def check_input(self, x) -> torch.Tensor:
        return check_input(self.program, x)

    def infer(self, x) -> torch.Tensor:
        """What the output policy opens for every sample of ``x`` (uint8, (N, *input_shape)):
        the logits (int64, (N, classes)) or the ``k`` indices (int64, (N, k))."""
        if self.session is None or self._ended:
            raise PrivQuantError("the session is not open")
        x = check_input(self.program, x)
        step = min(self.policy.max_batch, self.chunk or self.policy.max_batch)
        outs = []
        for i in range(0, len(x), step):
            xb = x[i : i + step]
            _send_request(self.party, len(xb), self.policy.needs_dealer)
            outs.append(self.session.infer(len(xb), xb).logits)
            self.summary.inferences += 1
            self.summary.samples += len(xb)
            self.summary.batches.append(len(xb))
        return torch.cat(outs) if outs else torch.empty(0, dtype=torch.int64)

    def close(self) -> SessionSummary:
        if not self._ended and self.session is not None:
            self._ended = True
            _send_request(self.party, 0, self.policy.needs_dealer)
            self.party.flush()
        res = self.session.result() if self.session is not None else None
        s = self.summary
        if res is not None:
            s.seconds = {**res.seconds, "total": time.perf_counter() - self._t0}
            s.stats, s.scopes = res.stats, res.scopes
        s.extra.update(
            model=self.program.model if self.program else None,
            architecture_hash=self.digest,
        )
        return s


def logits_result(program: Program, logits: torch.Tensor) -> dict:
    return {
        "logits_int": logits.tolist(),
        "logits": output_logits(program, logits).tolist(),
        "labels": plain_topk(logits, 1)[:, 0].tolist() if logits.numel() else [],
    }


def prediction_result(program: Program, output: str, out: torch.Tensor) -> dict:
    """The client's result under output policy ``output``: ``labels`` always; ``topk`` (the K
    indices per sample, largest first) under ``topk:K``; the logits only under ``logits``."""
    k = policy_k(output)
    if k is None:
        return {"output": output, **logits_result(program, out)}
    res = {"output": output, "labels": out[:, 0].tolist() if out.numel() else []}
    if output != "label":
        res["topk"] = out.tolist()
    return res


# ------------------------------------------------------------------------------------ network
def _hello_error(link: tls.Link, msg: str) -> None:
    with contextlib.suppress(PrivQuantError):
        link.send_control({"v": VERSION, "ok": False, "error": msg})


def _expect_ok(reply: dict, who: str) -> dict:
    if reply.get("v") != VERSION:
        raise PeerError(f"the {who} speaks another PrivQuant protocol version ({reply.get('v')!r})")
    if reply.get("ok") is not True:
        err = reply.get("error")
        raise PeerError(f"the {who} refused: {str(err)[:300] if err else 'no reason given'}")
    return reply


def _load_identity(key) -> Identity:
    if isinstance(key, Identity):
        return key
    if isinstance(key, str | Path):
        return Identity.load(key)
    raise PrivQuantError("a key is needed: a path to a key file from privquant keygen")


class _Service:
    """Accept loop, session threads, bounded concurrency, clean shutdown (server and dealer)."""

    role = "service"

    def __init__(self, listen: str, *, timeout: float, max_sessions: int, log):
        if not (isinstance(timeout, int | float) and 0 < timeout < float("inf")):
            raise PrivQuantError(f"timeout must be a finite number > 0, got {timeout!r}")
        if not 1 <= int(max_sessions) <= 256:
            raise PrivQuantError("max sessions must be in 1..256")
        self.host, self.port = framing.parse_address(listen, f"{self.role} listen address")
        self.timeout = float(timeout)
        self.max_sessions = int(max_sessions)
        self.log = log or (lambda m: _stderr(f"privquant {self.role}: {m}"))
        self._slots = threading.BoundedSemaphore(self.max_sessions)
        # connections in their first steps (handshake, hello): bounded too
        self._greeting = threading.BoundedSemaphore(2 * self.max_sessions + 8)
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._links: dict[int, list[tls.Link]] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self.completed = 0
        self.failed = 0
        self._accept_thread: threading.Thread | None = None

    # -- lifecycle
    def start(self):
        self._sock = tls.listen(self.host, self.port)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"privquant-{self.role}-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                raw, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            if not self._greeting.acquire(blocking=False):
                raw.close()  # too many connections still greeting: drop at once
                continue
            with self._lock:
                self._counter += 1
                sid = self._counter
            t = threading.Thread(
                target=self._run_conn,
                args=(raw, addr, sid),
                name=f"privquant-{self.role}-{sid}",
                daemon=True,
            )
            with self._lock:
                self._threads.add(t)
            t.start()

    def _run_conn(self, raw, addr, sid) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        greeting = [True]

        def greeted():
            if greeting[0]:
                greeting[0] = False
                self._greeting.release()

        try:
            self.handle(raw, peer, sid, greeted)
        except PrivQuantError as e:
            self.failed += 1
            self.log(f"session {sid} from {peer} dropped: {e}")
        except Exception as e:  # a bug must not end the service either: one line, go on
            self.failed += 1
            self.log(f"session {sid} from {peer} failed: {type(e).__name__}: {e}")
        finally:
            greeted()
            with self._lock:
                for link in self._links.pop(sid, []):
                    link.close(0.5)
                self._threads.discard(threading.current_thread())

    def _track(self, sid: int, link: tls.Link) -> tls.Link:
        with self._lock:
            self._links.setdefault(sid, []).append(link)
        if self._stop.is_set() and self._aborting:
            link.close(0.1)
        return link

    _aborting = False

    def handle(self, raw, peer, sid, greeted) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def active(self) -> int:
        with self._lock:
            return len(self._threads)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting; let running sessions finish for ``grace`` s (default: timeout),
        then abort them (their links are closed: each ends with one error line)."""
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if self._accept_thread is not None:
            self._accept_thread.join(2.0)
        deadline = time.monotonic() + (self.timeout if grace is None else grace)
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.abort()

    def abort(self) -> None:
        self._aborting = True
        with self._lock:
            links = [k for ks in self._links.values() for k in ks]
            threads = list(self._threads)
        for k in links:
            k.close(0.1)
        for t in threads:
            t.join(5.0)

    def serve_until_signal(self, ready: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM/SIGINT: then stop accepting and let sessions finish (a second
        signal aborts them)."""
        signals = [0]

        def on_signal(signum, frame):
            signals[0] += 1
            self._stop.set()
            if signals[0] > 1:
                self._aborting = True

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if ready:
                ready()
            while not self._stop.is_set():
                time.sleep(0.1)
            self.log(f"stopping: no new sessions; waiting for {self.active()} running session(s)")
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
            deadline = time.monotonic() + self.timeout
            while self.active() and time.monotonic() < deadline and not self._aborting:
                time.sleep(0.05)
            self.abort()
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def __enter__(self):
        if self._sock is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop(grace=0 if exc[0] is not None else None)


class Server(_Service):
    """A long-running server: loads the model once, serves client sessions until stopped.

    ``Server(model, key="server.key", dealer="HOST:PORT", dealer_key=FP)``; ``model`` is a
    :class:`~privquant.quantized.QuantizedModel`, a :class:`Program` with weights or a ``.pq``
    path. ``listen`` defaults to loopback. ``start()`` returns at once (sessions run in
    threads); use as a context manager, or :meth:`serve_until_signal` in a CLI.
    """

    role = "serve"

    def __init__(
        self,
        model,
        *,
        key,
        listen: str = f"127.0.0.1:{DEFAULT_SERVER_PORT}",
        dealer: str | None = None,
        dealer_key: str | None = None,
        dealer_public: str | None = None,
        policy: Policy | None = None,
        max_sessions: int = 4,
        timeout: float = DEFAULT_TIMEOUT,
        backend: str = "privquant",
        log: Callable[[str], None] | None = None,
    ):
        super().__init__(listen, timeout=timeout, max_sessions=max_sessions, log=log)
        self.program = _as_program(model)
        if not self.program.has_weights:
            raise PrivQuantError("the server needs an artifact with weights")
        self.policy = policy or Policy()
        self.policy.check_supported()
        output_program(self.program, self.policy.output)  # K <= classes, a logit vector
        self.identity = _load_identity(key)
        self.backend = backend
        self.digest = self.program.architecture_hash()
        if self.policy.needs_dealer:
            if dealer is None or dealer_key is None:
                raise PrivQuantError(
                    "dealer preprocessing needs --dealer HOST:PORT and --dealer-key FINGERPRINT"
                )
            self.dealer_addr = framing.parse_address(dealer, "--dealer")
            self.dealer_pin = normalize_pin(dealer_key, "--dealer-key")
            self.dealer_public = dealer_public or dealer
            framing.parse_address(self.dealer_public, "--dealer-public")
        self.ctx = tls.server_context(self.identity)
        self.dealer_ctx = tls.client_context()

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    def handle(self, raw, peer, sid, greeted) -> None:
        t0 = time.perf_counter()
        sock = tls.tls_accept(raw, self.ctx, self.timeout)
        client = self._track(sid, tls.Link(sock, PARTY_NAMES[CLIENT], self.timeout))
        hello = client.recv_control("the client's hello")
        if hello.get("v") != VERSION:
            _hello_error(client, f"protocol version {VERSION} expected")
            raise PeerError(f"hello of protocol version {hello.get('v')!r}")
        if hello.get("role") != "client":
            _hello_error(client, "this port serves clients only")
            raise PeerError(f"a {str(hello.get('role'))[:40]!r} connected to the client port")
        if not self._slots.acquire(blocking=False):
            _hello_error(client, f"server busy ({self.max_sessions} sessions running)")
            raise PeerError(f"refused: {self.max_sessions} sessions already running")
        try:
            greeted()
            self._session(client, sid, peer, t0)
        finally:
            self._slots.release()

    def _session(self, client: tls.Link, sid: int, peer: str, t0: float) -> None:
        links = {CLIENT: client}
        reply = {"v": VERSION, "ok": True, **self.policy.as_dict()}
        if self.policy.needs_dealer:
            token = secrets.token_hex(32)
            session_id = secrets.token_hex(16)
            host, port = self.dealer_addr
            try:
                dsock, dfp = tls.tls_connect(
                    host,
                    port,
                    self.dealer_ctx,
                    pin=self.dealer_pin,
                    peer="dealer",
                    timeout=self.timeout,
                )
            except PeerError as e:
                _hello_error(client, "the server cannot reach its dealer")
                raise PeerError(f"dealer: {e}") from None
            msg = tls.auth_message(dsock, dfp, "server") + session_id.encode() + token.encode()
            dealer = self._track(sid, tls.Link(dsock, PARTY_NAMES[DEALER], self.timeout))
            dealer.send_control(
                {
                    "v": VERSION,
                    "role": "server",
                    "session": session_id,
                    "token": token,
                    "public_key": self.identity.public_raw.hex(),
                    "signature": self.identity.sign(msg).hex(),
                }
            )
            try:
                _expect_ok(dealer.recv_control("the dealer's answer"), "dealer")
            except PeerError as e:
                _hello_error(client, "the server's dealer refused the session")
                raise PeerError(f"dealer: {e}") from None
            links[DEALER] = dealer
            reply.update(
                session=session_id,
                token=token,
                dealer={"address": self.dealer_public, "fingerprint": dfp},
            )
        client.send_control(reply)
        party = Party(SERVER, NetTransport(SERVER, links))
        try:
            s = server_session(party, self.program, self.policy, backend=self.backend)
        finally:
            with contextlib.suppress(PrivQuantError):
                party.close()
        self.completed += 1
        self.log(
            f"session {sid} from {peer}: {s.inferences} inference(s), {s.samples} sample(s), "
            f"{time.perf_counter() - t0:.2f} s"
        )


def _as_program(model) -> Program:
    if isinstance(model, Program):
        return model
    if isinstance(model, str | Path):
        from privquant.quantized import QuantizedModel

        return QuantizedModel.load(model).program
    prog = getattr(model, "program", None)
    if isinstance(prog, Program):
        return prog
    raise PrivQuantError("model must be a QuantizedModel, a Program or a .pq path")


class Dealer(_Service):
    """A long-running dealer: serves the sessions of the servers it trusts.

    ``Dealer(key="dealer.key", trust_servers=[FP, ...])``. A server authenticates with its key
    (signature over the connection's binding) and registers a session with a one-time token;
    the session's client must present that token on its own connection. Pending registrations
    expire after ``timeout``.
    """

    role = "dealer"

    def __init__(
        self,
        *,
        key,
        trust_servers: Iterable[str],
        listen: str = f"127.0.0.1:{DEFAULT_DEALER_PORT}",
        max_sessions: int = 4,
        timeout: float = DEFAULT_TIMEOUT,
        backend: str = "privquant",
        log: Callable[[str], None] | None = None,
    ):
        super().__init__(listen, timeout=timeout, max_sessions=max_sessions, log=log)
        self.identity = _load_identity(key)
        self.pins = [normalize_pin(p, "--trust-server") for p in trust_servers]
        if not self.pins:
            raise PrivQuantError("the dealer needs at least one --trust-server FINGERPRINT")
        self.backend = backend
        self.ctx = tls.server_context(self.identity)
        self._pending: dict[str, dict] = {}
        self._pcv = threading.Condition()

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    def handle(self, raw, peer, sid, greeted) -> None:
        sock = tls.tls_accept(raw, self.ctx, self.timeout)
        binding = tls.auth_message(sock, self.fingerprint, "server")  # before the I/O thread
        link = self._track(sid, tls.Link(sock, "peer", self.timeout))
        hello = link.recv_control("a hello")
        if hello.get("v") != VERSION:
            _hello_error(link, f"protocol version {VERSION} expected")
            raise PeerError(f"hello of protocol version {hello.get('v')!r}")
        role = hello.get("role")
        if role == "server":
            self._server(link, binding, hello, sid, peer, greeted)
        elif role == "client":
            self._client(link, hello, sid, peer, greeted)
        else:
            _hello_error(link, "unknown role")
            raise PeerError(f"a peer with role {str(role)[:40]!r} connected")

    def _server(self, link, binding, hello, sid, peer, greeted) -> None:
        try:
            pub = bytes.fromhex(str(hello.get("public_key", "")))
            sig = bytes.fromhex(str(hello.get("signature", "")))
            session_id = str(hello["session"])
            token = str(hello["token"])
        except (KeyError, ValueError):
            _hello_error(link, "malformed server hello")
            raise PeerError("malformed server hello") from None
        fp = fingerprint_of(pub)
        if not any(pin_matches(p, fp) for p in self.pins):
            _hello_error(link, "this dealer does not serve your key")
            raise PeerError(f"refused a server with key {fp}: not in --trust-server")
        if not verify_signature(pub, sig, binding + session_id.encode() + token.encode()):
            _hello_error(link, "bad signature")
            raise PeerError(f"refused a server claiming key {fp}: bad signature")
        if len(token) != 64 or len(session_id) != 32:
            _hello_error(link, "malformed session")
            raise PeerError("malformed session registration")
        if not self._slots.acquire(blocking=False):
            _hello_error(link, f"dealer busy ({self.max_sessions} sessions running)")
            raise PeerError(f"refused a session: {self.max_sessions} already running")
        try:
            entry = {"token": token, "client": None, "server_fp": fp}
            with self._pcv:
                if session_id in self._pending:
                    _hello_error(link, "duplicate session")
                    raise PeerError("duplicate session id")
                self._pending[session_id] = entry
            link.peer = PARTY_NAMES[SERVER]
            link.send_control({"v": VERSION, "ok": True})
            greeted()
            deadline = time.monotonic() + self.timeout
            with self._pcv:
                while entry["client"] is None and time.monotonic() < deadline:
                    if self._stop.is_set() and self._aborting:
                        break
                    self._pcv.wait(min(0.2, max(deadline - time.monotonic(), 0.01)))
                self._pending.pop(session_id, None)
            client = entry["client"]
            if client is None:
                raise PeerError("the server's client did not come to the dealer in time")
            self._track(sid, client)
            t0 = time.perf_counter()
            party = Party(DEALER, NetTransport(DEALER, {SERVER: link, CLIENT: client}))
            try:
                s = dealer_session(party, backend=self.backend)
            finally:
                with contextlib.suppress(PrivQuantError):
                    party.close()
            self.completed += 1
            self.log(
                f"session {sid} for server {fp[:16]}... from {peer}: {s.inferences} "
                f"inference(s), {s.samples} sample(s), {time.perf_counter() - t0:.2f} s"
            )
        finally:
            self._slots.release()

    def _client(self, link, hello, sid, peer, greeted) -> None:
        session_id = str(hello.get("session", ""))
        token = str(hello.get("token", ""))
        with self._pcv:
            entry = self._pending.get(session_id)
            ok = (
                entry is not None
                and entry["client"] is None
                and len(token) == 64
                and secrets.compare_digest(entry["token"], token)
            )
            if ok:
                link.peer = PARTY_NAMES[CLIENT]
                link.send_control({"v": VERSION, "ok": True})
                with self._lock:  # the server's session thread owns the link from now on
                    self._links.get(sid, []).remove(link)
                entry["client"] = link
                self._pcv.notify_all()
        if not ok:
            _hello_error(link, "no such session (unknown, used or expired token)")
            raise PeerError("refused a client with an unknown, used or expired session token")
        greeted()


def connect_client(
    server: str,
    *,
    server_key: str,
    dealer_key: str | None = None,
    dealer: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Party, dict]:
    """Open the client's links (server, then its dealer) and return the client's Party."""
    if not (isinstance(timeout, int | float) and 0 < timeout < float("inf")):
        raise PrivQuantError(f"timeout must be a finite number > 0, got {timeout!r}")
    host, port = framing.parse_address(server, "--server")
    pin = normalize_pin(server_key, "--server-key")
    dpin = normalize_pin(dealer_key, "--dealer-key") if dealer_key is not None else None
    if dealer is not None:
        framing.parse_address(dealer, "--dealer")
    ctx = tls.client_context()
    ssock, _ = tls.tls_connect(host, port, ctx, pin=pin, peer="server", timeout=timeout)
    links = {SERVER: tls.Link(ssock, PARTY_NAMES[SERVER], timeout)}
    try:
        links[SERVER].send_control({"v": VERSION, "role": "client"})
        reply = _expect_ok(links[SERVER].recv_control("the server's answer"), "server")
        if reply.get("preprocessing") == "dealer":
            d = reply.get("dealer")
            if not isinstance(d, dict):
                raise PeerError("the server named no dealer")
            dfp = str(d.get("fingerprint", ""))
            if dpin is None:
                raise PrivQuantError(
                    f"the server uses the dealer with key {dfp}; pass --dealer-key with the "
                    "fingerprint of the dealer you trust"
                )
            if not pin_matches(dpin, dfp):
                raise PeerError(
                    f"the server uses the dealer with key {dfp}, but you trust {dpin}: refusing "
                    "before any secret is sent"
                )
            dhost, dport = framing.parse_address(
                dealer if dealer is not None else str(d.get("address", "")), "dealer address"
            )
            dsock, _ = tls.tls_connect(dhost, dport, ctx, pin=dpin, peer="dealer", timeout=timeout)
            links[DEALER] = tls.Link(dsock, PARTY_NAMES[DEALER], timeout)
            links[DEALER].send_control(
                {
                    "v": VERSION,
                    "role": "client",
                    "session": str(reply.get("session", "")),
                    "token": str(reply.get("token", "")),
                }
            )
            _expect_ok(links[DEALER].recv_control("the dealer's answer"), "dealer")
    except BaseException:
        for link in links.values():
            link.close(0.2)
        raise
    return Party(CLIENT, NetTransport(CLIENT, links)), reply


class Client:
    """A client session against a network server (notebook / web handler friendly).

    ::

        with privquant.Client("server:29500", server_key=FP, dealer_key=FP2,
                              expect_hash=H) as c:
            out = c.infer(images)   # {"labels"} (+ "topk", or "logits", "logits_int")

    The session's setup runs once on entering; every :meth:`infer` call runs one inference per
    chunk of at most the server's ``max_batch`` images.
    """

    def __init__(
        self,
        server: str,
        *,
        server_key: str,
        dealer_key: str | None = None,
        dealer: str | None = None,
        expect_hash: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        backend: str = "privquant",
        progress: bool = False,
        chunk: int | None = None,
        log: Callable[[str], None] = _stderr,
    ):
        validate_hash_arg(expect_hash)
        self._args = dict(server_key=server_key, dealer_key=dealer_key, dealer=dealer)
        self.server, self.timeout = server, timeout
        self.expect_hash, self.backend, self.progress = expect_hash, backend, progress
        self.chunk, self.log = chunk, log
        self.session: ClientSession | None = None
        self.info: dict = {}

    def open(self) -> Client:
        party, self.info = connect_client(self.server, timeout=self.timeout, **self._args)
        sess = ClientSession(
            party,
            expect_hash=self.expect_hash,
            backend=self.backend,
            progress=self.progress,
            chunk=self.chunk,
            log=self.log,
        )
        try:
            sess.open()
        except BaseException:
            with contextlib.suppress(PrivQuantError):
                party.close()
            raise
        self.session = sess
        return self

    @property
    def program(self) -> Program:
        return self.session.program

    @property
    def policy(self) -> Policy:
        return self.session.policy

    def infer(self, x) -> dict:
        if self.session is None:
            self.open()
        try:
            logits = self.session.infer(x)
        except PeerError:
            self._abort()
            raise
        return {
            "model": self.program.model,
            **prediction_result(self.program, self.policy.output, logits),
        }

    def close(self) -> SessionSummary | None:
        if self.session is None:
            return None
        sess, self.session = self.session, None
        try:
            return sess.close()
        finally:
            with contextlib.suppress(PrivQuantError):
                sess.party.close()

    def _abort(self) -> None:
        if self.session is not None:
            self.session.party.transport.close()
            self.session = None

    def __enter__(self) -> Client:
        return self.open()

    def __exit__(self, *exc):
        if exc[0] is not None:
            self._abort()
        else:
            self.close()
