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
:class:`~privquant.errors.PeerError`. A message whose size differs from the posted receive makes
gloo abort the whole process, which is why the fixed-size header travels as its own message and
is checked before the payload receive is posted.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re

import numpy as np
import torch

from privquant._crypten import get_comm
from privquant.errors import PeerError
from privquant.protocols.channel import DEALER, HEADER_BYTES, PARTY_NAMES, SendHandle, Transport

DEFAULT_TIMEOUT = 60.0


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
            return all(w.is_completed() for w in self.works)
        except Exception:  # a failed send counts as done here; wait() reports it
            return False


class CryptenTransport(Transport):
    """Byte transport over an initialized CrypTen communicator (see :func:`init_communicator`)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        comm = get_comm()
        self.comm = comm.get()
        self.rank = self.comm.get_rank()
        self.timeout = datetime.timedelta(seconds=timeout)
        self._timeout_s = timeout

    def _isend(self, t: torch.Tensor, dst: int):
        if DEALER in (self.rank, dst):
            return _dist().isend(t, dst, group=self.comm.ttp_group)
        return self.comm.isend(t, dst)

    def _irecv(self, t: torch.Tensor, src: int):
        if DEALER in (self.rank, src):
            return _dist().irecv(t, src, group=self.comm.ttp_group)
        return self.comm.irecv(t, src)

    def post_send(self, dst: int, header: bytes, payload: np.ndarray) -> SendHandle:
        h = torch.frombuffer(bytearray(header), dtype=torch.uint8)
        p = torch.from_numpy(np.ascontiguousarray(payload, dtype=np.uint8))
        what = f"a message to the {PARTY_NAMES[dst]}"
        try:
            works = [self._isend(h, dst)]
            if p.numel():
                works.append(self._isend(p, dst))
        except Exception as e:
            raise PeerError(f"sending {what} failed: {_short(e)}") from None
        return _Handles(works, self.timeout, what, keep=(h, p))

    def _recv(self, t: torch.Tensor, src: int, what: str) -> torch.Tensor:
        try:
            self._irecv(t, src).wait(timeout=self.timeout)
        except Exception as e:
            msg = _short(e)
            if "Timed out" in msg or "timeout" in msg.lower():
                raise PeerError(
                    f"timed out after {self._timeout_s:g} s waiting for {what}"
                ) from None
            raise PeerError(f"lost the connection while waiting for {what}: {msg}") from None
        return t

    def recv_header(self, src: int, what: str) -> bytes:
        t = self._recv(torch.empty(HEADER_BYTES, dtype=torch.uint8), src, what)
        return t.numpy().tobytes()

    def recv_payload(self, src: int, nbytes: int, what: str) -> np.ndarray:
        if nbytes == 0:
            return np.empty(0, dtype=np.uint8)
        return self._recv(torch.empty(nbytes, dtype=torch.uint8), src, what).numpy()
