"""The DDP comm hook and the state every compressor shares.

``hook(state, bucket)`` is what ``DistributedDataParallel.register_comm_hook`` receives. (This
module deliberately has no ``from __future__ import annotations``: DDP checks at registration
that the hook's ``bucket`` parameter is annotated with the real ``dist.GradBucket``.)

Rules the hook follows (torch 2.13, gloo):

* every collective is issued from the hook body, in the same order on every rank (a fixed
  sequence per bucket, at most two, the first blocking); ``.then`` callbacks only decode;
* DDP rebuilds its buckets after iteration 0, so the first ``start_iter`` (>= 2) iterations run
  a plain fp32 allreduce and per-bucket state is keyed by ``bucket.index()`` and reset if the
  bucket's size changes;
* decoding sums the ranks' contributions in rank order with identical code on every rank, so
  the averaged gradient -- hence every replica -- is bit-identical;
* all state (error feedback, momentum, the rank's RNG, the step) is in ``state_dict()``;
  process groups, ledgers and secret keys are not pickled.
"""

import hashlib
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from privquant.errors import PeerError, PrivQuantError
from privquant.train.gradcomp.bits import Segments
from privquant.train.gradcomp.comm import Comm, Traffic, allreduce_traffic


class GradCompressor:
    """Base class: subclasses implement :meth:`compress` (and :meth:`traffic`, the closed-form
    declared bytes per bucket and step)."""

    name = "base"
    summable = False  # True: the payload is an integer vector the collective sums

    def __init__(self, *, seed: int = 0, start_iter: int = 2, private: bool = False) -> None:
        if private and not self.summable:
            raise PrivQuantError(
                f"{self.name}: private aggregation needs a summable payload (use --summable)"
            )
        self.private = bool(private)
        self.masks = None
        if start_iter < 2:
            raise PrivQuantError("compression must start at iteration >= 2 (DDP rebuilds buckets)")
        self.seed = int(seed)
        self.start_iter = int(start_iter)
        self.iteration = 0
        self.buckets: dict[int, dict[str, torch.Tensor]] = {}
        self.comm: Comm | None = None
        self.gen = torch.Generator()
        self._segments: dict[int, Segments] = {}
        self.last_info: dict[int, dict] = {}
        self.resets = 0  # per-bucket states dropped because their bucket changed
        self.dry = False  # True: no communication, no state change (see layout_pass)

    # ------------------------------------------------------------------ set-up / options
    def options(self) -> dict[str, Any]:
        """The method's options (JSON-able), for logs and checkpoints."""
        return {"private": self.private} if self.summable else {}

    def setup(self, group=None) -> None:
        """Bind to the process group (call once per process, before training)."""
        self.comm = Comm(group)
        if not self._rng_restored:
            digest = hashlib.sha256(f"gradcomp:{self.seed}:{self.comm.rank}".encode()).digest()
            self.gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        if self.private:
            from privquant.train.gradcomp.secagg import PairwiseMasks

            self.masks = PairwiseMasks.agree(self.comm)

    _rng_restored = False

    @property
    def world(self) -> int:
        return self.comm.world

    @property
    def rank(self) -> int:
        return self.comm.rank

    # ------------------------------------------------------------------ per-bucket state
    def state_for(self, index: int, seg: Segments, **init: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state of bucket ``index``; (re)created from ``init`` when missing or when the
        bucket now holds different layers (sizes differ: DDP rebuilt its buckets)."""
        sizes = torch.tensor(seg.sizes, dtype=torch.int64)
        st = self.buckets.get(index)
        if st is None or not torch.equal(st["sizes"], sizes):
            if st is not None:
                self.resets += 1
            st = {"sizes": sizes}
            st.update({k: v.clone() for k, v in init.items()})
            self.buckets[index] = st
        return st

    def segments(self, bucket: dist.GradBucket) -> Segments:
        """The layers (parameter tensors) of this bucket, cached by index and size."""
        sizes = [g.numel() for g in bucket.gradients()]
        seg = self._segments.get(bucket.index())
        if seg is None or seg.sizes != sizes:
            seg = Segments(sizes)
            self._segments[bucket.index()] = seg
        return seg

    # ------------------------------------------------------------------ the hook body
    def run(self, bucket: dist.GradBucket) -> torch.futures.Future:
        if self.comm is None:
            raise PrivQuantError("call setup() on the compressor before training")
        buf = bucket.buffer()
        if self.dry:
            fut = torch.futures.Future()
            fut.set_result(buf)
            return fut
        if buf.dtype != torch.float32 or buf.device.type != "cpu":
            raise PrivQuantError("gradient compression needs float32 CPU gradients")
        ledger = self.comm.ledger
        ledger.add_baseline(buf.numel())
        if self.iteration < self.start_iter:
            fut = self._plain_allreduce(buf)
            ledger.add_closed(baseline_traffic(buf.numel(), self.world, self.rank))
        else:
            seg = self.segments(bucket)
            fut = self.compress(bucket.index(), buf, seg)
            ledger.add_closed(self.traffic(buf.numel(), seg, self.last_info.get(bucket.index())))
        if bucket.is_last():
            self.iteration += 1
        return fut

    def _plain_allreduce(self, buf: torch.Tensor) -> torch.futures.Future:
        buf.div_(self.world)
        fut = self.comm.allreduce(buf)
        return fut.then(lambda f: f.value()[0])

    def compress(self, index: int, buf: torch.Tensor, seg: Segments) -> torch.futures.Future:
        raise NotImplementedError

    def sum_codes(self, index: int, codes: torch.Tensor, ring_bits: int):
        """All-reduce integer ``codes`` (|sum over ranks| < 2^(ring_bits-1)) in ``Z_2^ring_bits``,
        masked with the pairwise PRG masks when ``private``. Returns ``(future, decode)``;
        ``decode()`` gives the signed int64 sum once the future is done."""
        mask = None
        if self.private:
            mask = self.masks.mask(self.iteration, index, codes.numel(), ring_bits)
        wire = ring_encode(codes, ring_bits, mask)
        fut = self.comm.allreduce(wire)
        return fut, lambda: ring_decode(wire, ring_bits)

    def traffic(self, numel: int, seg: Segments, info: dict) -> Traffic:
        """Closed-form bytes this rank sends for one bucket and step (``info``: what the step
        chose when the size is data-dependent, e.g. CO3's compressed lengths)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "options": self.options(),
            "seed": self.seed,
            "start_iter": self.start_iter,
            "iteration": self.iteration,
            "rng": self.gen.get_state(),
            "buckets": {
                int(i): {k: v.clone() for k, v in st.items()} for i, st in self.buckets.items()
            },
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("method") != self.name:
            raise PrivQuantError(f"checkpoint is for {sd.get('method')!r}, not {self.name!r}")
        if sd.get("options") != self.options():
            raise PrivQuantError(
                f"checkpoint options {sd.get('options')} differ from {self.options()}"
            )
        self.seed = int(sd["seed"])
        self.start_iter = int(sd["start_iter"])
        self.iteration = int(sd["iteration"])
        self.gen.set_state(sd["rng"])
        self._rng_restored = True
        self.buckets = {
            int(i): {k: v.clone() for k, v in st.items()} for i, st in sd["buckets"].items()
        }

    def __getstate__(self) -> dict[str, Any]:
        return self.state_dict()

    def __setstate__(self, sd: dict[str, Any]) -> None:
        self.__init__(**sd["options"], seed=sd["seed"], start_iter=sd["start_iter"])
        self.load_state_dict(sd)


def layout_pass(ddp, comp: GradCompressor, inputs) -> None:
    """One forward/backward in eval mode through a silent hook (no collectives, no state, no
    optimizer step), so that DDP rebuilds its buckets before the first real step. A resumed
    run calls it: the saved per-bucket state then meets the same bucket layout it was saved
    with (DDP's first iteration uses parameter order, later ones gradient-ready order)."""
    module = ddp.module
    was_training = module.training
    module.eval()
    comp.dry = True
    try:
        out = ddp(inputs)
        out.float().sum().backward()
    finally:
        comp.dry = False
        module.train(was_training)
        for p in module.parameters():
            p.grad = None


def hook(state: GradCompressor, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP comm hook: ``ddp.register_comm_hook(compressor, hook)``."""
    return state.run(bucket)


# ---------------------------------------------------------------------- helpers for subclasses
def check_payload(ok: bool, what: str) -> None:
    """Payloads come from peers: a malformed one stops training with one clear error."""
    if not ok:
        raise PeerError(f"malformed gradient payload from a peer: {what}")


def fp32_bytes(x: torch.Tensor) -> torch.Tensor:
    """float32 tensor -> its bytes (uint8), for the front of a payload (4-byte aligned)."""
    return x.to(torch.float32).contiguous().view(torch.uint8)


def fp32_from(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float32)


def stochastic_round(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``floor(x) + Bernoulli(x - floor(x))``: unbiased integer rounding (int64)."""
    lo = torch.floor(x)
    return (lo + (torch.rand(x.shape, generator=gen) < (x - lo)).to(x.dtype)).to(torch.int64)


def ring_bits_for(max_abs_sum: int) -> int:
    """Smallest gloo-summable ring (uint8 or int32 words) holding sums in [-m, m]."""
    return 8 if 2 * max_abs_sum + 1 <= 256 else 32


def ring_encode(codes: torch.Tensor, ring_bits: int, mask: np.ndarray | None) -> torch.Tensor:
    """Signed integer codes (plus an optional uint64 mask) mod ``2^ring_bits``, as the tensor
    gloo sums: uint8 (unsigned, wraps mod 256) or int32 (two's complement)."""
    v = codes.reshape(-1).numpy().astype(np.int64).astype(np.uint64)
    if mask is not None:
        v = v + mask
    if ring_bits == 8:
        return torch.from_numpy((v % np.uint64(256)).astype(np.uint8))
    return torch.from_numpy((v % np.uint64(1 << 32)).astype(np.uint32).view(np.int32))


def ring_decode(t: torch.Tensor, ring_bits: int) -> torch.Tensor:
    """Ring words -> signed int64 in [-2^(k-1), 2^(k-1))."""
    v = t.numpy().astype(np.int64)
    if ring_bits == 8:
        v = np.where(v >= 128, v - 256, v)
    return torch.from_numpy(v)


def baseline_traffic(numel: int, world: int, rank: int) -> Traffic:
    return allreduce_traffic(4 * numel, 4, world, rank)
