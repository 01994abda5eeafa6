"""Collectives with exact byte accounting: what this rank sends, declared in closed form and
measured from the kernel.

**Declared** bytes follow the algorithms torch 2.13's ``ProcessGroupGloo`` runs on CPU tensors
(gloo's ``allreduce.cc`` ring and ``allgather.cc`` ring, read from gloo's source):

* ``all_reduce`` of ``B = n * e`` bytes (``e`` = element size) on ``W`` ranks: segment size
  ``S = e * ceil(ceil(B / 2W) / e)``, ``M = W * ceil(max(ceil(B / S), 2W) / W)`` segments,
  ``M / W`` per rank; reduce-scatter and allgather each run ``M - 2`` iterations in which rank
  ``r`` sends the in-range part of one segment (offsets ``((r+1)M/W + i) S`` and ``(rM/W + i) S``
  mod ``MS``) and posts one receive. Per rank, for ``B >= 2W*e``: payload ``2(W-1)/W * B`` on
  average over the ranks (exactly ``2(W-1) * B / W`` each when ``2W | n``).
* ``all_gather`` of ``c`` bytes per rank: ``2(W-1)`` sends (each block in two halves) of
  total ``(W-1) * c``, and ``2(W-1)`` posted receives.
* **Framing** (gloo's TCP transport, fitted and then checked exactly): every send carries
  ``SEND_HEADER = 96`` bytes and every posted receive makes this rank send a
  ``RECV_HEADER = 48``-byte notification. So ``wire = payload + 96 * sends + 48 * recvs``.

**Measured** bytes: the sum over this process's TCP sockets of the kernel's
``tcp_info.tcpi_bytes_sent - tcpi_bytes_retrans`` (Linux >= 4.19), read before and after a step:
everything gloo (and the rendezvous store) wrote to the network, headers included, IP/TCP
headers excluded. Tests check ``measured == declared wire`` exactly on loopback.

Validated range: exact equality was measured for single collectives up to 4 MiB at W = 2 and 4
(which is why the trainer's DDP buckets default to 4 MiB). For 12-26 MB all_reduces gloo sends
0.004-0.012% more than this model (a few kB that the peer does receive; cause not pinned down),
so the equality is not claimed there.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

SEND_HEADER = 96
RECV_HEADER = 48
_TCP_INFO_BYTES_SENT = 200  # offsetof(struct tcp_info, tcpi_bytes_sent); bytes_retrans follows


@dataclass(frozen=True)
class Traffic:
    """Bytes one rank sends for one collective (or a sum of them)."""

    payload: int = 0
    sends: int = 0
    recvs: int = 0

    @property
    def wire(self) -> int:
        return self.payload + SEND_HEADER * self.sends + RECV_HEADER * self.recvs

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.payload + other.payload, self.sends + other.sends, self.recvs + other.recvs
        )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def allreduce_traffic(nbytes: int, elem: int, world: int, rank: int) -> Traffic:
    """What ``rank`` sends in gloo's ring ``all_reduce`` of ``nbytes`` (see module docstring)."""
    if world == 1 or nbytes == 0:
        return Traffic()
    seg = _ceil_div(_ceil_div(nbytes, 2 * world), elem) * elem
    nseg = _ceil_div(max(_ceil_div(nbytes, seg), 2 * world), world) * world
    spr, span = nseg // world, nseg * seg
    payload = sends = recvs = 0
    for first_send, first_recv in ((rank + 1, rank + 2), (rank, rank + 1)):  # RS, then AG
        for i in range(nseg - 2):
            s_len = min(seg, nbytes - ((first_send * spr + i) * seg) % span)
            r_len = min(seg, nbytes - ((first_recv * spr + i) * seg) % span)
            if s_len > 0:
                payload += s_len
                sends += 1
            recvs += r_len > 0
    return Traffic(payload, sends, recvs)


def allgather_traffic(nbytes: int, world: int) -> Traffic:
    """What one rank sends in gloo's ring ``all_gather`` of ``nbytes`` per rank."""
    if world == 1:
        return Traffic()
    return Traffic((world - 1) * nbytes, 2 * (world - 1), 2 * (world - 1))


def fp32_allreduce_traffic(numel: int, world: int, rank: int) -> Traffic:
    """The uncompressed baseline for a bucket of ``numel`` float32 gradients."""
    return allreduce_traffic(4 * numel, 4, world, rank)


def tcp_bytes_sent() -> int:
    """Bytes this process has sent over all its TCP sockets (kernel counters, no retransmits)."""
    total = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
            if len(info) >= _TCP_INFO_BYTES_SENT + 16:
                sent, retrans = struct.unpack_from("=QQ", info, _TCP_INFO_BYTES_SENT)
                total += sent - retrans
        except OSError:
            pass
        finally:
            s.close()
    return total


@dataclass
class Ledger:
    """Declared traffic of this rank, per training step, as the hooks issue collectives."""

    world: int
    rank: int
    current: Traffic = Traffic()  # from the tensors actually handed to the collectives
    closed: Traffic = Traffic()  # from each method's closed-form traffic()
    baseline: Traffic = Traffic()  # fp32 allreduce of the same buckets
    steps: list[dict] = field(default_factory=list)

    def add(self, t: Traffic) -> None:
        self.current = self.current + t

    def add_closed(self, t: Traffic) -> None:
        self.closed = self.closed + t

    def add_baseline(self, numel: int) -> None:
        self.baseline = self.baseline + fp32_allreduce_traffic(numel, self.world, self.rank)

    def close_step(self) -> dict:
        rec = {
            "payload": self.current.payload,
            "wire": self.current.wire,
            "closed_payload": self.closed.payload,
            "closed_wire": self.closed.wire,
            "fp32_wire": self.baseline.wire,
            "fp32_payload": self.baseline.payload,
        }
        self.steps.append(rec)
        self.current, self.closed, self.baseline = Traffic(), Traffic(), Traffic()
        return rec


class Comm:
    """The collectives a hook may issue (from the hook body only, never from a ``.then``
    callback), each recorded in the ledger with its declared traffic."""

    def __init__(self, group=None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.ledger = Ledger(self.world, self.rank)

    def allreduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.futures.Future:
        """Async in-place all_reduce of a contiguous CPU tensor; the future yields ``[t]``."""
        self.ledger.add(
            allreduce_traffic(t.numel() * t.element_size(), t.element_size(), self.world, self.rank)
        )
        return dist.all_reduce(t, op=op, group=self.group, async_op=True).get_future()

    def allreduce_now(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """Blocking all_reduce (small tensors: shared scales, norms)."""
        self.allreduce(t, op).wait()
        return t

    def allgather(self, t: torch.Tensor) -> tuple[torch.futures.Future, list[torch.Tensor]]:
        """Async all_gather of a 1-D uint8 payload; returns the future and the W outputs (rank
        order) -- kept here because gloo's future holds a flat list."""
        t = t.contiguous()
        outs = [torch.empty_like(t) for _ in range(self.world)]
        self.ledger.add(allgather_traffic(t.numel() * t.element_size(), self.world))
        fut = dist.all_gather(outs, t, group=self.group, async_op=True).get_future()
        return fut, outs

    def allgather_now(self, t: torch.Tensor) -> list[torch.Tensor]:
        fut, outs = self.allgather(t)
        fut.wait()
        return outs
