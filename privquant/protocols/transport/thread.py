"""In-process transport over queues, and :func:`simulate` (P0, P1 and the dealer as threads).

For tests and single-machine development. Every receive waits at most ``timeout`` seconds and
polls a shared abort flag, so a party that raises makes its peers fail fast with
:class:`~privquant.errors.PeerError` instead of hanging; :func:`simulate` re-raises the first
*original* exception.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from privquant.errors import PeerError
from privquant.protocols.transport.channel import (
    DEALER,
    HEADER_BYTES,
    PARTY_NAMES,
    CommStats,
    Party,
    SendHandle,
    Transport,
)


class ThreadHub:
    """Queues for every ordered pair of ranks plus a shared abort event."""

    def __init__(self, ranks=(0, 1, 2), timeout: float = 60.0):
        self.queues = {(s, d): queue.Queue() for s in ranks for d in ranks if s != d}
        self.abort = threading.Event()
        self.timeout = timeout

    def endpoint(self, rank: int) -> ThreadTransport:
        return ThreadTransport(self, rank)


class ThreadTransport(Transport):
    def __init__(self, hub: ThreadHub, rank: int):
        self.hub = hub
        self.rank = rank
        self._pending: dict[int, np.ndarray] = {}

    def post_send(self, dst: int, header: bytes, payload: np.ndarray) -> SendHandle:
        if self.hub.abort.is_set():
            raise PeerError("aborted: another party failed")
        self.hub.queues[(self.rank, dst)].put((bytes(header), np.array(payload, dtype=np.uint8)))
        return SendHandle()

    def _get(self, src: int, what: str):
        q = self.hub.queues[(src, self.rank)]
        deadline = time.monotonic() + self.hub.timeout
        while True:
            if self.hub.abort.is_set() and q.empty():
                raise PeerError(f"aborted while waiting for {what}: another party failed")
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"timed out after {self.hub.timeout:g} s waiting for {what}")
            try:
                return q.get(timeout=min(0.05, left))
            except queue.Empty:
                continue

    def recv_header(self, src: int, nbytes: int, what: str) -> bytes:
        # queues hold whole messages: nothing to post ahead, a wrong length is checked below
        header, payload = self._get(src, what)
        if len(header) != HEADER_BYTES:
            raise PeerError(f"malformed header while waiting for {what}")
        self._pending[src] = payload
        return header

    def recv_payload(self, src: int, nbytes: int, what: str) -> np.ndarray:
        payload = self._pending.pop(src)
        if payload.size != nbytes:
            raise PeerError(f"payload of {payload.size} bytes, expected {nbytes}, for {what}")
        return payload


@dataclass
class SimResult:
    """Results and accounting of :func:`simulate`, indexed by rank (0, 1, 2)."""

    results: list[Any]
    parties: list[Party | None]

    @property
    def stats(self) -> list[CommStats | None]:
        return [p.stats if p is not None else None for p in self.parties]


def simulate(
    fn0: Callable[[Party], Any],
    fn1: Callable[[Party], Any],
    dealer_fn: Callable[[Party], Any] | None = None,
    *,
    timeout: float = 60.0,
    insecure_simulated: bool = False,
) -> SimResult:
    """Run ``fn0(P0)``, ``fn1(P1)`` and optionally ``dealer_fn(D)`` as threads of this process.

    Returns every function's result and every party (whose ``stats``/``scopes`` hold the
    accounting). If any function raises, the others are aborted and the first original exception
    (not a consequent :class:`PeerError`) is re-raised. No thread outlives the call by more than
    ``timeout`` seconds.
    """
    hub = ThreadHub(timeout=timeout)
    fns = [fn0, fn1, dealer_fn]
    parties: list[Party | None] = [
        Party(r, hub.endpoint(r), insecure_simulated=insecure_simulated) if f is not None else None
        for r, f in enumerate(fns)
    ]
    results: list[Any] = [None, None, None]
    errors: list[tuple[float, int, BaseException]] = []
    lock = threading.Lock()

    def run(rank: int) -> None:
        try:
            results[rank] = fns[rank](parties[rank])
        except BaseException as e:
            with lock:
                errors.append((time.monotonic(), rank, e))
            hub.abort.set()

    threads = [
        threading.Thread(target=run, args=(r,), name=f"privquant-{PARTY_NAMES[r]}", daemon=True)
        for r in range(3)
        if fns[r] is not None
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 5.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        hub.abort.set()
        for t in threads:
            t.join(2.0)
        raise PeerError(f"simulation did not finish within {timeout:g} s")
    if errors:
        originals = [e for e in errors if not isinstance(e[2], PeerError)] or errors
        raise sorted(originals, key=lambda e: e[0])[0][2]
    return SimResult(results, parties)


__all__ = ["DEALER", "SimResult", "ThreadHub", "ThreadTransport", "simulate"]
