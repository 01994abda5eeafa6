"""Deep Gradient Compression (Lin et al., ICLR 2018, arXiv 1712.01887): sparse top-k updates.

Per bucket, per rank (the optimizer runs with momentum 0: the momentum lives here):

1. local gradient clipping: if ``clip > 0``, ``g <- g * min(1, clip / (sqrt(W) ||g||_2))`` (the
   paper scales the threshold by ``N^-1/2``; a hook sees one bucket, so the norm is the bucket's);
2. momentum correction: ``u <- m u + g``, ``v <- v + u``;
3. threshold from a sample: ``max(1, ceil(rho_s N))`` entries of ``|v|`` (``rho_s = sample``,
   drawn with the rank's RNG), ``t`` = their ``ceil(density * sample)``-th largest; candidates
   ``|v| >= t``, and exactly ``k = max(1, ceil(density * N))`` entries kept (top-k among the
   candidates, or of all of ``|v|`` when the sample under-estimated);
4. momentum factor masking: ``u[sent] = 0``, ``v[sent] = 0``;
5. warm-up: density ``0.25, 0.0625, 0.015625, 0.004`` for equal quarters of ``warmup`` steps
   after the start, then ``density`` (never below the final density).

Payload ``[k values fp32 | k indices int32]``, ``8k`` bytes, all-gathered:
``allgather_traffic(8k, W)`` per bucket and step (``k`` from the step's density). Decoding
scatters every rank's values (indices checked to lie in ``[0, N)``) in rank order and divides
by ``W``. Against fp32 at ``W = 2``: ``4N / 8k = 1 / (2 density)`` in payload.
"""

from __future__ import annotations

import math

import torch

from privquant.errors import PrivQuantError
from privquant.train.gradcomp import bits as B
from privquant.train.gradcomp.base import GradCompressor, check_payload, fp32_bytes, fp32_from
from privquant.train.gradcomp.comm import Traffic, allgather_traffic

WARMUP_DENSITIES = (0.25, 0.0625, 0.015625, 0.004)


class DGC(GradCompressor):
    name = "dgc"

    def __init__(
        self,
        *,
        density: float = 0.001,
        momentum: float = 0.9,
        clip: float = 0.0,
        sample: float = 0.01,
        warmup: int = 0,
        **kw,
    ) -> None:
        if not 0 < density <= 1:
            raise PrivQuantError("dgc: --density must be in (0, 1]")
        if not 0 <= momentum < 1:
            raise PrivQuantError("dgc: --momentum must be in [0, 1)")
        if clip < 0 or not 0 < sample <= 1 or warmup < 0:
            raise PrivQuantError("dgc: need --clip >= 0, --sample in (0, 1], --warmup >= 0")
        self.density, self.momentum, self.clip = float(density), float(momentum), float(clip)
        self.sample, self.warmup = float(sample), int(warmup)
        super().__init__(**kw)

    def options(self) -> dict:
        return {
            "density": self.density,
            "momentum": self.momentum,
            "clip": self.clip,
            "sample": self.sample,
            "warmup": self.warmup,
        }

    def density_at(self, iteration: int) -> float:
        t = iteration - self.start_iter
        if self.warmup > 0 and 0 <= t < self.warmup:
            stage = min(4 * t // self.warmup, 3)
            return max(WARMUP_DENSITIES[stage], self.density)
        return self.density

    def keep(self, numel: int, iteration: int) -> int:
        return max(1, math.ceil(self.density_at(iteration) * numel))

    def select(self, v: torch.Tensor, k: int) -> torch.Tensor:
        """Indices of exactly ``k`` largest-magnitude entries (sampled threshold first)."""
        a = v.abs()
        n = a.numel()
        if k >= n:
            return torch.arange(n)
        m = max(1, math.ceil(self.sample * n))
        sample = a[torch.randint(0, n, (m,), generator=self.gen)]
        ks = max(1, math.ceil(k / n * m))
        thr = torch.topk(sample, ks, sorted=False).values.min()
        cand = torch.nonzero(a >= thr).reshape(-1)
        if cand.numel() >= k:
            return cand[torch.topk(a[cand], k, sorted=False).indices]
        return torch.topk(a, k, sorted=False).indices

    def compress(self, index: int, buf: torch.Tensor, seg: B.Segments) -> torch.futures.Future:
        n, world = buf.numel(), self.world
        st = self.state_for(index, seg, u=buf.new_zeros(n), v=buf.new_zeros(n))
        g = buf
        if self.clip > 0:
            norm = float(g.norm())
            limit = self.clip / math.sqrt(world)
            if norm > limit:
                g = g * (limit / norm)
        st["u"].mul_(self.momentum).add_(g)
        st["v"].add_(st["u"])
        k = self.keep(n, self.iteration)
        idx = self.select(st["v"], k)
        vals = st["v"][idx].clone()
        st["u"][idx] = 0.0
        st["v"][idx] = 0.0
        payload = torch.cat([fp32_bytes(vals), idx.to(torch.int32).view(torch.uint8)])
        fut, outs = self.comm.allgather(payload)
        self.last_info[index] = {"k": k}

        def decode(_):
            acc = torch.zeros(n, dtype=torch.float32)
            for out in outs:
                i = out[4 * k :].view(torch.int32).to(torch.int64)
                check_payload(bool(((i >= 0) & (i < n)).all()), "DGC index out of range")
                acc.index_add_(0, i, fp32_from(out[: 4 * k]))
            return buf.copy_(acc / world)

        return fut.then(decode)

    def traffic(self, numel: int, seg: B.Segments, info: dict) -> Traffic:
        return allgather_traffic(8 * info["k"], self.world)
