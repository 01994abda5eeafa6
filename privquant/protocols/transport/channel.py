"""Parties, the message format and communication accounting.

A :class:`Party` (rank 0 = server P0, 1 = client P1, 2 = dealer D) owns a transport and is passed
explicitly to every protocol; there are no module globals. Its methods send ring tensors of
``ell``-bit elements packed to ``ceil(n*ell/8)`` bytes.

Wire format of one message: a 16-byte header followed by the packed payload::

    offset  size  field
    0       1     magic 0xA7
    1       1     format version (high nibble, 2) | phase (low nibble: 0 online, 1 offline, 2 setup)
    2       2     scope stamp: Lamport stamp relative to the sender's current scope (uint16)
    4       4     tag: crc32 of "<step tag>|<ell>|<n>" (uint32 little-endian)
    8       4     payload length in bytes (uint32)
    12      4     Lamport stamp (uint32)

The receiver always knows what it expects (tag, ell, n, hence the length) and tells the
transport so before waiting (:meth:`Transport.recv_header` gets ``nbytes``): a transport that
needs posted receives (gloo) posts whatever the whole message still needs at once, never one
part after another. The header is then checked first, and any
difference raises :class:`privquant.errors.PeerError` (a peer that runs another model, another
program version or that got out of step) before the payload is used.

Clean errors versus speed over gloo (details in :mod:`privquant.protocols.transport.crypten`):
gloo transmits a message only once the receiver has posted its receive, completes a receive
silently when the message is *shorter* than the posted buffer, and aborts the whole process when
it is *longer*. Format v1 received the header alone first and posted the payload's receive only
after checking it: abort-proof, but a hop cost about 4 one-way delays instead of 1 (WAN runs
took 2.6-3.2x the latency estimate). Format v2 sends header + payload as one message cut into
pieces of at most ``transport_crypten.PIECE_BYTES``, and every receive posted has exactly that
capacity: no v2 message can overflow a receive, so a mismatched peer still gets a
:class:`PeerError` from the header check, never an abort, in every phase (handshake included),
and receives can be posted ahead (a window per source), so a hop costs one one-way delay. A v1
peer is rejected by the version check. Framing therefore belongs to the format version.

Accounting (:class:`CommStats`, per party, total and per ``with party.scope(name):``): logical bits
(``n*ell``) and messages sent and received, wire bytes (header + payload) sent and received, per
phase ``online`` / ``offline`` (dealer -> party) / ``setup`` (once per model load).

Rounds are measured with Lamport clocks per phase: a message carries ``stamp = clock + 1`` (the
sender's clock does not move), and on receipt ``clock = max(clock, stamp)``. A simultaneous
exchange is therefore 1 round, P1->P0 followed by P0->P1 is 2, and two sends in the same
direction without waiting are 1. Two clocks are kept:

* the session clock (``CommStats.depth`` of the totals): the true causal depth of everything so
  far. Across consecutive protocols it can grow by *less* than the sum of their rounds when a
  protocol's first message does not wait for the previous one's last (the parties are then out of
  phase and overlap) -- the sum of declared rounds is an upper bound;
* a scope clock, reset to 0 when a scope is entered (the header's scope stamp), so the rounds of
  one layer are measured as if it started from synchronized clocks: exactly what its ``cost()``
  declares. A scope's ``depth`` adds up over re-entries; only the innermost scope counts.
"""

from __future__ import annotations

import collections
import contextlib
import struct
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from privquant.errors import PeerError
from privquant.protocols.primitives import packing
from privquant.protocols.primitives.ring import reduce

SERVER, CLIENT, DEALER = 0, 1, 2
PARTY_NAMES = {SERVER: "server (P0)", CLIENT: "client (P1)", DEALER: "dealer (D)"}
PHASES = ("online", "offline", "setup")
_PHASE_CODE = {p: i for i, p in enumerate(PHASES)}

MAGIC = 0xA7
VERSION = 2  # 2: header + payload travel as one message, cut into fixed-size pieces
HEADER = struct.Struct("<BBHIII")
HEADER_BYTES = HEADER.size  # 16
assert HEADER_BYTES == 16


def tag_code(tag: str, ell: int, n: int) -> int:
    """The 32-bit tag carried in the header: crc32 of ``"tag|ell|n"``."""
    return zlib.crc32(f"{tag}|{ell}|{n}".encode())


def make_header(phase: str, code: int, length: int, stamp: int, scope_stamp: int = 0) -> bytes:
    return HEADER.pack(
        MAGIC,
        (VERSION << 4) | _PHASE_CODE[phase],
        min(scope_stamp, 0xFFFF),
        code,
        length,
        stamp & 0xFFFFFFFF,
    )


# ------------------------------------------------------------------------------------ stats
def _zeros() -> dict[str, int]:
    return dict.fromkeys(PHASES, 0)


@dataclass
class CommStats:
    """Traffic of one party (whole run or one scope).

    ``bits_sent[phase]`` etc. are logical bits; ``wire_sent`` counts header + payload bytes.
    ``clock_start``/``clock_end`` are the party's session clock when the scope was first entered
    and last left. ``depth`` is the party's Lamport depth: the session clock for the totals, the
    scope clock (summed over re-entries) for a scope. ``rounds`` = online depth; use
    :func:`combine` for the joint value over parties.
    """

    bits_sent: dict[str, int] = field(default_factory=_zeros)
    bits_recv: dict[str, int] = field(default_factory=_zeros)
    msgs_sent: dict[str, int] = field(default_factory=_zeros)
    msgs_recv: dict[str, int] = field(default_factory=_zeros)
    wire_sent: dict[str, int] = field(default_factory=_zeros)
    wire_recv: dict[str, int] = field(default_factory=_zeros)
    clock_start: dict[str, int] = field(default_factory=_zeros)
    clock_end: dict[str, int] = field(default_factory=_zeros)
    depth: dict[str, int] = field(default_factory=_zeros)
    insecure_simulated: bool = False

    # the names used in reports: bits *sent* by this party in each phase
    @property
    def online_bits(self) -> int:
        return self.bits_sent["online"]

    @property
    def offline_bits(self) -> int:
        return self.bits_sent["offline"]

    @property
    def setup_bits(self) -> int:
        return self.bits_sent["setup"]

    @property
    def messages(self) -> int:
        return sum(self.msgs_sent.values())

    @property
    def wire_bytes(self) -> int:
        return sum(self.wire_sent.values())

    @property
    def rounds(self) -> int:
        return self.depth["online"]

    def phase_rounds(self, phase: str) -> int:
        return self.depth[phase]

    def as_dict(self) -> dict:
        return {
            "online_bits": self.online_bits,
            "offline_bits": self.offline_bits,
            "setup_bits": self.setup_bits,
            "rounds": self.rounds,
            "messages": self.messages,
            "wire_bytes": self.wire_bytes,
            "bits_sent": dict(self.bits_sent),
            "bits_recv": dict(self.bits_recv),
            "msgs_sent": dict(self.msgs_sent),
            "msgs_recv": dict(self.msgs_recv),
            "wire_sent": dict(self.wire_sent),
            "wire_recv": dict(self.wire_recv),
            "clock_start": dict(self.clock_start),
            "clock_end": dict(self.clock_end),
            "depth": dict(self.depth),
            "insecure_simulated": self.insecure_simulated,
        }

    @staticmethod
    def from_dict(d: dict) -> CommStats:
        keys = (
            "bits_sent",
            "bits_recv",
            "msgs_sent",
            "msgs_recv",
            "wire_sent",
            "wire_recv",
            "clock_start",
            "clock_end",
            "depth",
        )
        s = CommStats(**{k: dict(d[k]) for k in keys})
        s.insecure_simulated = bool(d.get("insecure_simulated", False))
        return s


def combine(stats: list[CommStats]) -> CommStats:
    """Joint view over parties (e.g. P0, P1 and D for one scope).

    Bits, messages and wire bytes are sums of what every party *sent* (received counters are summed
    too). ``depth`` (hence ``rounds``) is the max over parties: the joint Lamport depth (of the
    session for totals, of the scope from synchronized clocks for scopes). ``clock_start`` and
    ``clock_end`` are maxima over parties too.
    """
    out = CommStats()
    for s in stats:
        for name in ("bits_sent", "bits_recv", "msgs_sent", "msgs_recv", "wire_sent", "wire_recv"):
            for p in PHASES:
                getattr(out, name)[p] += getattr(s, name)[p]
        out.insecure_simulated |= s.insecure_simulated
    for p in PHASES:
        out.clock_start[p] = max((s.clock_start[p] for s in stats), default=0)
        out.clock_end[p] = max((s.clock_end[p] for s in stats), default=0)
        out.depth[p] = max((s.depth[p] for s in stats), default=0)
    return out


class StatsBook:
    """Total and per-scope :class:`CommStats` of one party, plus its Lamport clocks."""

    def __init__(self, insecure_simulated: bool = False):
        self.clock = _zeros()  # session clock
        self.total = CommStats(insecure_simulated=insecure_simulated)
        self.scopes: dict[str, CommStats] = {}
        self._stack: list[tuple[str, dict[str, int]]] = []  # (scope, its scope clock)
        self.insecure_simulated = insecure_simulated

    @property
    def current_scope(self) -> str | None:
        return self._stack[-1][0] if self._stack else None

    def _targets(self, scope: str | None) -> list[CommStats]:
        out = [self.total]
        if scope is not None:
            out.append(self.scope_stats(scope))
        return out

    def scope_stats(self, name: str) -> CommStats:
        """The stats of scope ``name`` (created, starting at the current clocks, if new)."""
        s = self.scopes.get(name)
        if s is None:
            s = CommStats(insecure_simulated=self.insecure_simulated)
            s.clock_start = dict(self.clock)
            s.clock_end = dict(self.clock)
            self.scopes[name] = s
        return s

    @contextlib.contextmanager
    def scope(self, name: str):
        self.scope_stats(name)
        rel = _zeros()
        self._stack.append((name, rel))
        try:
            yield self.scopes[name]
        finally:
            self._stack.pop()
            st = self.scopes[name]
            st.clock_end = dict(self.clock)
            for p in PHASES:
                st.depth[p] += rel[p]

    def stamps(self, phase: str) -> tuple[int, int]:
        """(session stamp, scope stamp) for a message sent now."""
        rel = self._stack[-1][1][phase] + 1 if self._stack else 0
        return self.clock[phase] + 1, rel

    def record_send(self, phase: str, bits: int, wire: int, scope: str | None = None) -> None:
        scope = self.current_scope if scope is None else scope
        for s in self._targets(scope):
            s.bits_sent[phase] += bits
            s.msgs_sent[phase] += 1
            s.wire_sent[phase] += wire

    def record_recv(
        self,
        phase: str,
        bits: int,
        wire: int,
        stamp: int,
        scope_stamp: int = 0,
        scope: str | None = None,
    ) -> None:
        scope = self.current_scope if scope is None else scope
        self.clock[phase] = max(self.clock[phase], stamp)
        if self._stack and scope == self._stack[-1][0]:
            rel = self._stack[-1][1]
            rel[phase] = max(rel[phase], scope_stamp)
        for s in self._targets(scope):
            s.bits_recv[phase] += bits
            s.msgs_recv[phase] += 1
            s.wire_recv[phase] += wire
            s.clock_end[phase] = self.clock[phase]
        self.total.clock_end[phase] = self.clock[phase]
        self.total.depth[phase] = self.clock[phase]


# ------------------------------------------------------------------------------------ transport
class SendHandle:
    """Completion handle of a posted send (no-op for in-process transports)."""

    def wait(self) -> None:  # pragma: no cover - trivial
        return None

    def done(self) -> bool:
        return True


class Transport(ABC):
    """Moves raw bytes between ranks. Implementations: thread queues, CrypTen's communicator."""

    rank: int

    @abstractmethod
    def post_send(self, dst: int, header: bytes, payload: np.ndarray) -> SendHandle:
        """Start sending one message, ``header`` then ``payload`` (uint8), to ``dst``."""

    @abstractmethod
    def recv_header(self, src: int, nbytes: int, what: str) -> bytes:
        """Start receiving the next message from ``src``, whose payload is expected to be
        ``nbytes`` long, and return its 16-byte header as soon as that has arrived.

        ``what`` names the message in errors. The payload may still be in flight; a message of
        another length must yield a header (which the caller rejects) or a :class:`PeerError`,
        never a crash or a hang beyond the timeout."""

    @abstractmethod
    def recv_payload(self, src: int, nbytes: int, what: str) -> np.ndarray:
        """Finish receiving the message whose header was just returned: its ``nbytes`` uint8."""

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------ party
class Party:
    """One participant: rank, transport, accounting. Passed explicitly to every protocol.

    Receives block until the message arrives or the transport's timeout expires
    (:class:`PeerError`). Sends are asynchronous: :meth:`flush` (or :meth:`close`) waits for
    their delivery and must be called before a process exits.
    """

    MAX_PENDING = 64

    def __init__(self, rank: int, transport: Transport, *, insecure_simulated: bool = False):
        if rank not in PARTY_NAMES:
            raise ValueError(f"rank must be 0 (server), 1 (client) or 2 (dealer), got {rank}")
        self.rank = rank
        self.transport = transport
        self.book = StatsBook(insecure_simulated=insecure_simulated)
        self._pending: collections.deque[SendHandle] = collections.deque()

    # -- accounting views
    @property
    def stats(self) -> CommStats:
        return self.book.total

    @property
    def scopes(self) -> dict[str, CommStats]:
        return self.book.scopes

    @property
    def name(self) -> str:
        return PARTY_NAMES[self.rank]

    @property
    def peer(self) -> int:
        """The other computing party (P0 <-> P1)."""
        if self.rank == DEALER:
            raise ValueError("the dealer has no computing peer")
        return 1 - self.rank

    def scope(self, name: str):
        """``with party.scope("layer1.conv"):`` -- attribute traffic to a layer scope."""
        return self.book.scope(name)

    # -- raw message primitives
    def _post(
        self, dst: int, payload: torch.Tensor, tag: str, ell: int, n: int, phase: str
    ) -> SendHandle:
        data = payload.numpy()
        stamp, scope_stamp = self.book.stamps(phase)
        header = make_header(phase, tag_code(tag, ell, n), data.size, stamp, scope_stamp)
        handle = self.transport.post_send(dst, header, data)
        self.book.record_send(phase, n * ell, HEADER_BYTES + data.size)
        # Sends complete asynchronously (gloo completes a send only once the receiver has posted
        # the matching receive, so waiting here could deadlock three parties); completion is
        # checked lazily and by flush(): the oldest ones as long as they are done (one poll per
        # send, not one per pending send); at the cap the oldest is waited for (gloo reports a
        # send completed only once waited for, so polling all of them found none).
        pending = self._pending
        while pending and pending[0].done():
            pending.popleft()
        while len(pending) >= self.MAX_PENDING:
            pending.popleft().wait()
        pending.append(handle)
        return handle

    def _recv(self, src: int, tag: str, ell: int, n: int, phase: str) -> torch.Tensor:
        nbytes = packing.packed_nbytes(n, ell)
        what = f"'{tag}' ({n} x {ell} bits, {phase}) from the {PARTY_NAMES[src]}"
        raw = self.transport.recv_header(src, nbytes, what)
        try:
            magic, vp, scope_stamp, code, length, stamp = HEADER.unpack(raw)
        except struct.error:
            raise PeerError(f"malformed message header while waiting for {what}") from None
        version, ph = vp >> 4, vp & 0xF
        if magic != MAGIC or version != VERSION:
            raise PeerError(f"not a PrivQuant v{VERSION} message while waiting for {what}")
        if ph != _PHASE_CODE[phase] or code != tag_code(tag, ell, n) or length != nbytes:
            got = PHASES[ph] if ph < len(PHASES) else f"phase {ph}"
            raise PeerError(
                f"protocol mismatch: expected {what}, {nbytes} bytes; the peer sent a message "
                f"of phase {got!r} with tag {code:#010x} and {length} bytes "
                "(the parties run different models, bit widths or protocol versions)"
            )
        data = self.transport.recv_payload(src, nbytes, what)
        self.book.record_recv(phase, n * ell, HEADER_BYTES + nbytes, stamp, scope_stamp)
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))

    # -- ring tensors
    def send(self, dst: int, x: torch.Tensor, ell: int, tag: str, phase: str = "online") -> None:
        """Send an int64 tensor of ``ell``-bit values (reduced mod 2^ell) to ``dst``."""
        n = x.numel()
        self._post(dst, packing.pack(reduce(x, ell), ell), tag, ell, n, phase)

    def recv(self, src: int, shape, ell: int, tag: str, phase: str = "online") -> torch.Tensor:
        """Receive an int64 tensor of the given shape of ``ell``-bit values from ``src``."""
        shape = tuple(shape)
        n = int(np.prod(shape)) if shape else 1
        return packing.unpack(self._recv(src, tag, ell, n, phase), n, ell).reshape(shape)

    def exchange(self, x: torch.Tensor, ell: int, tag: str) -> torch.Tensor:
        """Simultaneous online exchange with the peer: send ``x``, return the peer's tensor."""
        n = x.numel()
        self._post(self.peer, packing.pack(reduce(x, ell), ell), tag, ell, n, "online")
        return packing.unpack(self._recv(self.peer, tag, ell, n, "online"), n, ell).reshape(x.shape)

    # -- raw bytes (OT blocks, ciphertexts, serialized public data): 8 bits per byte
    def send_raw(self, dst: int, data: np.ndarray | bytes, tag: str, phase: str = "online") -> None:
        """Send a flat uint8 buffer (``len(data) * 8`` logical bits) to ``dst``."""
        a = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
        a = np.ascontiguousarray(a, dtype=np.uint8).reshape(-1)
        if not a.flags.writeable:
            a = a.copy()
        self._post(dst, torch.from_numpy(a), tag, 8, a.size, phase)

    def recv_raw(self, src: int, nbytes: int, tag: str, phase: str = "online") -> np.ndarray:
        """Receive exactly ``nbytes`` bytes (a flat uint8 array) from ``src``."""
        return self._recv(src, tag, 8, int(nbytes), phase).numpy()

    # -- bit tensors (uint8 0/1), 1 bit per element on the wire
    def send_bits(self, dst: int, b: torch.Tensor, tag: str, phase: str = "online") -> None:
        self._post(dst, packing.pack_bits(b), tag, 1, b.numel(), phase)

    def recv_bits(self, src: int, shape, tag: str, phase: str = "online") -> torch.Tensor:
        shape = tuple(shape)
        n = int(np.prod(shape)) if shape else 1
        return packing.unpack_bits(self._recv(src, tag, 1, n, phase), n).reshape(shape)

    def exchange_bits(self, b: torch.Tensor, tag: str) -> torch.Tensor:
        n = b.numel()
        self._post(self.peer, packing.pack_bits(b), tag, 1, n, "online")
        return packing.unpack_bits(self._recv(self.peer, tag, 1, n, "online"), n).reshape(b.shape)

    def flush(self) -> None:
        """Wait until every message this party sent has been delivered (raises PeerError)."""
        pending, self._pending = self._pending, collections.deque()
        for h in pending:
            h.wait()

    def close(self) -> None:
        """Flush, then release the transport. Call before the process exits."""
        try:
            self.flush()
        finally:
            self.transport.close()
