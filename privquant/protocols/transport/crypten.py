"""Transport over CrypTen's communicator (torch.distributed, gloo) for real OS processes.

Ranks 0 (server) and 1 (client) are CrypTen's parties (``world_size = 2``); the dealer is rank 2,
CrypTen's TTP slot (``init_ttp=True`` makes the process group ``world_size + 1`` ranks wide).
Party <-> party messages use ``comm.get().isend/irecv`` (CrypTen's main group {0, 1}); dealer
messages use ``torch.distributed`` on ``comm.get().ttp_group`` ({0, 1, 2}) because CrypTen's
``send``/``recv`` are bound to the main group. Payloads are uint8 tensors (gloo moves raw bytes);
CrypTen's own byte counter (8 bytes per element whatever the dtype) is never used for reporting.

Timeouts (measured with torch 2.13 / gloo): the process-group ``timeout`` bounds the rendezvous,
but a *blocking* ``dist.recv`` ignores it (it waits until the peer's socket closes). So every
receive here is ``irecv(...).wait(timeout)``, which raises after the timeout; a peer that exits
closes its sockets and makes pending receives fail at once. Both become
:class:`~privquant.errors.PeerError`. The header waits at most ``timeout``, then the rest of the
payload at most ``timeout`` again.

Framing (format v2) and why. Measured with torch 2.13's gloo (TCP, unbound buffers):

* a send is transmitted only once the receiver's receive is posted (the receiver announces it,
  the sender waits for the notice). Posting a receive only when the message is needed makes a
  hop cost a round trip plus a one-way delay, and posting the payload's receive only after the
  header arrived (format v1) one more round trip;
* a message *shorter* than the posted receive completes it silently (the rest of the buffer is
  left as it was); a message *longer* than the posted receive aborts the whole process
  (``terminate``: "op.preamble.length <= op.nbytes"), which no Python code can catch.

So a message is the bytes ``header + payload`` cut into pieces of ``PIECE_BYTES`` (the last one
shorter), all posted at once by the sender, and every receive posted is exactly ``PIECE_BYTES``
long: a receive fits any piece, so

* no v2 message can abort the receiver: whatever a mismatched peer sends, its first piece lands
  in our first receive, the header check (:meth:`Party._recv`) raises
  :class:`~privquant.errors.PeerError`, and surplus pieces are simply never used;
* receives can be posted before anyone knows what will come: after the first valid message from
  a source, ``WINDOW`` receives from it are kept posted (re-posted as soon as a message has been
  copied out), so the peer's notices are already there when it sends, and a hop costs one
  one-way delay (the ``rounds * RTT / 2`` of the latency estimate). A receive needing more pieces
  than are posted posts the rest before waiting. The first message from each source is received
  with exactly its pieces posted (one round trip more, once), so that a format-v1 peer (header
  alone, then an unbounded payload) only meets single-piece receives before our version check
  rejects it; a v1 process receiving from us may still abort (its own limitation).

The transport owns point-to-point tag 0 of both groups: the windows would take any other
message sent there (CrypTen's own ``send``/``recv`` must not be mixed into a session).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import re
import time

import numpy as np
import torch

from privquant._crypten import get_comm
from privquant.errors import PeerError
from privquant.protocols.transport.channel import (
    DEALER,
    HEADER_BYTES,
    PARTY_NAMES,
    SendHandle,
    Transport,
)

DEFAULT_TIMEOUT = 60.0
# Every gloo message is at most this long, and every receive posted is exactly this long (see
# the module docstring): part of the v2 wire format, both parties must agree on it.
PIECE_BYTES = 1 << 18
# Receives kept posted per source once it has sent a valid message (WINDOW * PIECE_BYTES bytes).
WINDOW = 8


def _dist():
    import torch.distributed as dist

    return dist


def _short(e: BaseException) -> str:
    """One readable line from a gloo/c10d error (drops source paths and boilerplate)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", msg)
    msg = msg.split(". This is typically")[0]
    if re.search(r"Connection (closed|reset) by peer|Read error|Broken pipe", msg):
        return f"the peer closed the connection (it exited or crashed): {msg}"
    return msg[:300]


def init_communicator(
    rank: int,
    rendezvous: str,
    *,
    world_size: int = 2,
    dealer: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Initialize CrypTen's communicator for ``rank`` with an explicit rendezvous and timeout.

    ``rendezvous`` must be given explicitly (e.g. ``tcp://127.0.0.1:29500``): CrypTen's default is a
    random ``file://`` path chosen separately in every process, with which the parties never meet.
    ``dealer=True`` adds rank ``world_size`` (the TTP slot) for the dealer. The process group is
    created here with ``timeout`` (CrypTen's own initializer has no timeout argument) and CrypTen's
    ``DistributedCommunicator`` singleton is then attached to it, so ``comm.get()`` works as usual.
    Failure to meet the peers within ``timeout`` raises :class:`PeerError`.
    """
    if not isinstance(rendezvous, str) or not rendezvous.startswith(
        ("tcp://", "file://", "env://")
    ):
        raise ValueError(
            f"rendezvous must be explicit, e.g. tcp://127.0.0.1:PORT; got {rendezvous!r}"
        )
    if world_size != 2:
        raise ValueError("PrivQuant runs exactly two computing parties (world_size=2)")
    total = world_size + 1 if dealer else world_size
    if not 0 <= rank < total:
        raise ValueError(f"rank {rank} out of range for {total} processes")
    comm = get_comm()
    dist = _dist()
    cls = comm.DistributedCommunicator
    if cls.is_initialized():
        raise PeerError("the CrypTen communicator is already initialized in this process")
    os.environ.update(
        DISTRIBUTED_BACKEND="gloo",
        RENDEZVOUS=rendezvous,
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
    )
    td = datetime.timedelta(seconds=timeout)
    try:
        dist.init_process_group(
            "gloo", init_method=rendezvous, world_size=total, rank=rank, timeout=td
        )
        inst = cls.__new__(cls)  # __init__ would create the group without a timeout
        inst.distributed_backend = "gloo"
        inst.rendezvous = rendezvous
        inst.world_size = world_size
        inst.rank = rank
        inst.reset_communication_stats()
        inst._name = f"rank{rank}"
        inst.ttp_group = dist.new_group(list(range(total)), timeout=td)
        if total > 1:
            inst.ttp_comm_group = dist.new_group([0, total - 1], timeout=td)
        inst.main_group = dist.new_group(list(range(world_size)), timeout=td)
        inst.ttp_initialized = dealer
        cls.instance = inst
    except Exception as e:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise PeerError(
            f"could not connect the {PARTY_NAMES.get(rank, f'rank {rank}')} to its peers at "
            f"{rendezvous} within {timeout:g} s: {_short(e)}"
        ) from None


def shutdown_communicator() -> None:
    """Tear down the process group (without CrypTen's TTP 'terminate' message)."""
    comm = get_comm()
    dist = _dist()
    cls = comm.DistributedCommunicator
    if dist.is_initialized():
        with contextlib.suppress(Exception):  # best effort on shutdown
            dist.destroy_process_group()
    cls.instance = None


class _Handles(SendHandle):
    def __init__(self, works, timeout: datetime.timedelta, what: str, keep=()):
        self.works, self.timeout, self.what = works, timeout, what
        self.keep = keep  # the buffers must outlive the asynchronous send

    def wait(self) -> None:
        try:
            for w in self.works:
                w.wait(timeout=self.timeout)
        except Exception as e:
            raise PeerError(f"sending {self.what} failed: {_short(e)}") from None
        self.works, self.keep = [], ()

    def done(self) -> bool:
        try:
            while self.works and self.works[-1].is_completed():  # pieces complete in order
                self.works.pop()
        except Exception:  # a failed send counts as not done here; wait() reports it
            return False
        if self.works:
            return False
        self.keep = ()  # delivered: the buffers may go
        return True


class CryptenTransport(Transport):
    """Byte transport over an initialized CrypTen communicator (see :func:`init_communicator`)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        comm = get_comm()
        self.comm = comm.get()
        self.rank = self.comm.get_rank()
        self.timeout = datetime.timedelta(seconds=timeout)
        self._timeout_s = timeout
        # per source: posted receives (buffer, work) in posting order = gloo's matching order
        self._posted: dict[int, collections.deque] = {}
        # per source: the pieces of the message whose header recv_header returned, and its size
        self._inbox: dict[int, tuple[list, int]] = {}

    def _group(self, peer: int):
        # straight to torch.distributed on CrypTen's groups: CrypTen's own isend/irecv wrap
        # every call in its logging decorator, which reads its config on each message (about a
        # fifth of the client's online CPU time on resnet8) to count bytes we never report
        return self.comm.ttp_group if DEALER in (self.rank, peer) else self.comm.main_group

    def _isend(self, t: torch.Tensor, dst: int):
        return _dist().isend(t, dst, group=self._group(dst))

    def _irecv(self, t: torch.Tensor, src: int):
        return _dist().irecv(t, src, group=self._group(src))

    def post_send(self, dst: int, header: bytes, payload: np.ndarray) -> SendHandle:
        p = np.ascontiguousarray(payload, dtype=np.uint8).reshape(-1)
        first = min(p.size, PIECE_BYTES - HEADER_BYTES)
        head = np.empty(HEADER_BYTES + first, dtype=np.uint8)
        head[:HEADER_BYTES] = np.frombuffer(header, dtype=np.uint8)
        head[HEADER_BYTES:] = p[:first]
        pieces = [torch.from_numpy(head)]
        pieces += [
            torch.from_numpy(p[i : i + PIECE_BYTES]) for i in range(first, p.size, PIECE_BYTES)
        ]
        what = f"a message to the {PARTY_NAMES[dst]}"
        try:
            works = [self._isend(t, dst) for t in pieces]
        except Exception as e:
            raise PeerError(f"sending {what} failed: {_short(e)}") from None
        return _Handles(works, self.timeout, what, keep=(pieces, p))

    def _wait(self, work, what: str, deadline: float) -> None:
        left = max(deadline - time.monotonic(), 1e-3)
        try:
            work.wait(timeout=datetime.timedelta(seconds=left))
        except Exception as e:
            msg = _short(e)
            if "Timed out" in msg or "timeout" in msg.lower():
                raise PeerError(
                    f"timed out after {self._timeout_s:g} s waiting for {what}"
                ) from None
            raise PeerError(f"lost the connection while waiting for {what}: {msg}") from None

    def _post_recv(self, src: int, buf: torch.Tensor | None = None) -> None:
        if buf is None:
            buf = torch.empty(PIECE_BYTES, dtype=torch.uint8)
        self._posted.setdefault(src, collections.deque()).append((buf, self._irecv(buf, src)))

    def recv_header(self, src: int, nbytes: int, what: str) -> bytes:
        if src in self._inbox:  # only after an error: the stream from src is out of step
            raise PeerError(f"the previous message from the {PARTY_NAMES[src]} was not received")
        size = HEADER_BYTES + nbytes
        count = -(-size // PIECE_BYTES)
        posted = self._posted.setdefault(src, collections.deque())
        try:  # every piece's receive is posted before waiting for the first
            while len(posted) < count:
                self._post_recv(src)
        except Exception as e:
            raise PeerError(f"receiving {what} failed: {_short(e)}") from None
        pieces = [posted.popleft() for _ in range(count)]
        self._inbox[src] = (pieces, size)
        self._wait(pieces[0][1], what, time.monotonic() + self._timeout_s)
        return pieces[0][0][:HEADER_BYTES].numpy().tobytes()

    def recv_payload(self, src: int, nbytes: int, what: str) -> np.ndarray:
        pieces, size = self._inbox.pop(src)
        if size != HEADER_BYTES + nbytes:
            raise ValueError(f"payload of {nbytes} bytes requested, {size} expected")
        deadline = time.monotonic() + self._timeout_s
        for _, work in pieces[1:]:
            self._wait(work, what, deadline)
        out = np.empty(nbytes, dtype=np.uint8)
        for i, (buf, _) in enumerate(pieces):  # copy out, so the buffers can be posted again
            lo, hi = i * PIECE_BYTES, min(size, (i + 1) * PIECE_BYTES)
            skip = HEADER_BYTES if i == 0 else 0
            out[lo + skip - HEADER_BYTES : hi - HEADER_BYTES] = buf[skip : hi - lo].numpy()
        # the header was accepted (Party checks it before asking for the payload): a v2 peer,
        # in step with us, so keep WINDOW receives posted from it from now on
        free = [buf for buf, _ in pieces]
        try:
            while len(self._posted[src]) < WINDOW:
                self._post_recv(src, free.pop() if free else None)
        except Exception as e:
            raise PeerError(f"receiving from the {PARTY_NAMES[src]} failed: {_short(e)}") from None
        return out
