"""TernGrad (Wen et al., NeurIPS 2017, arXiv 1705.07878): stochastic ternary gradients.

Per layer ``l`` of the bucket (layer-wise ternarizing), with ``g`` the local gradient:

1. gradient clipping: ``g <- clamp(g, -c*sigma_l, c*sigma_l)``, ``sigma_l = std(g_l)``, ``c = clip``
   (2.5 in the paper; ``clip = 0`` disables it, and only then is the estimate unbiased);
2. scaler ``s_l = max |g_l|`` -- with ``summable`` (*scaler sharing*) ``s_l = max`` over ranks
   (a blocking all_reduce(MAX) of the ``L`` scalers);
3. ``code = sign(g) * Bernoulli(|g| / s_l)`` in {-1, 0, 1}, so ``E[s_l * code] = g``.

Payloads and declared bytes per bucket of ``N`` gradients in ``L`` layers, ``W`` ranks:

* default (allgather; per-rank scalers): ``[s_1..s_L fp32 | 2-bit codes]``,
  ``c = 4L + ceil(N/4)`` bytes -> ``allgather_traffic(c, W)``: payload ``(W-1) c``. Decoding
  sums ``s_l * code`` over the ranks in rank order and divides by ``W``.
* ``summable``: ``allreduce_traffic(4L, 4, W, r)`` (shared scalers) ``+ allreduce_traffic(N, 1,
  W, r)``: the codes summed as bytes in ``Z_256`` (sums lie in [-W, W]; needs ``W <= 127``,
  else int32 words, 4N bytes), optionally masked (``private``). Decoding: ``s_l * sum / W``.
"""

from __future__ import annotations

import torch

from privquant.errors import PrivQuantError
from privquant.train.gradcomp import bits as B
from privquant.train.gradcomp.base import (
    GradCompressor,
    check_payload,
    fp32_bytes,
    fp32_from,
    ring_bits_for,
)
from privquant.train.gradcomp.comm import Traffic, allgather_traffic, allreduce_traffic


class TernGrad(GradCompressor):
    name = "terngrad"

    def __init__(self, *, clip: float = 2.5, summable: bool = False, **kw) -> None:
        if clip < 0:
            raise PrivQuantError("terngrad: --clip must be >= 0 (0 disables clipping)")
        self.clip = float(clip)
        self.summable = bool(summable)
        super().__init__(**kw)

    def options(self) -> dict:
        return {"clip": self.clip, "summable": self.summable, **super().options()}

    def ternarize(self, g: torch.Tensor, seg: B.Segments) -> tuple[torch.Tensor, torch.Tensor]:
        """(clipped gradient, local per-layer scalers)."""
        if self.clip > 0:
            mean = seg.mean(g)
            var = seg.mean((g - seg.expand(mean)) ** 2)
            bound = seg.expand(self.clip * var.sqrt())
            g = torch.maximum(torch.minimum(g, bound), -bound)
        return g, seg.amax(g.abs())

    def codes(self, g: torch.Tensor, scale: torch.Tensor, seg: B.Segments) -> torch.Tensor:
        s = seg.expand(scale)
        p = torch.where(s > 0, g.abs() / s.clamp_min(1e-38), torch.zeros_like(g))
        keep = torch.rand(g.shape, generator=self.gen) < p
        return torch.sign(g).to(torch.int64) * keep

    def compress(self, index: int, buf: torch.Tensor, seg: B.Segments) -> torch.futures.Future:
        g, scale = self.ternarize(buf, seg)
        n, nl, world = buf.numel(), seg.count, self.world
        if self.summable:
            scale = self.comm.allreduce_now(scale.clone(), torch.distributed.ReduceOp.MAX)
            check_payload(bool(torch.isfinite(scale).all()), "non-finite shared TernGrad scaler")
            codes = self.codes(g, scale, seg)
            fut, total = self.sum_codes(index, codes, ring_bits_for(world))
            self.last_info[index] = {}

            def decode_sum(_):
                return buf.copy_(total().to(torch.float32) * seg.expand(scale) / world)

            return fut.then(decode_sum)
        codes = self.codes(g, scale, seg)
        payload = torch.cat([fp32_bytes(scale), B.pack(codes + 1, 2)])
        fut, outs = self.comm.allgather(payload)
        self.last_info[index] = {}

        def decode(_):
            acc = torch.zeros(n, dtype=torch.float32)
            for out in outs:
                s = fp32_from(out[: 4 * nl])
                check_payload(bool(torch.isfinite(s).all()), "non-finite TernGrad scaler")
                c = B.unpack(out[4 * nl :], 2, n)
                check_payload(bool((c <= 2).all()), "TernGrad code 3")
                acc += (c - 1).to(torch.float32) * seg.expand(s)
            return buf.copy_(acc / world)

        return fut.then(decode)

    def traffic(self, numel: int, seg: B.Segments, info: dict) -> Traffic:
        w, r = self.world, self.rank
        if self.summable:
            rb = ring_bits_for(w)
            return allreduce_traffic(4 * seg.count, 4, w, r) + allreduce_traffic(
                numel * rb // 8, rb // 8, w, r
            )
        return allgather_traffic(4 * seg.count + B.packed_len(numel, 2), w)
