"""BinGrad (An Xu, Zhouyuan Huo, Heng Huang, arXiv 2002.11082): biased binary gradient
quantization with levels set by the optimality condition, plus error feedback.

Only the paper's abstract was readable here (the search tool's copy stops there), so the
condition is derived, not transcribed: a binary quantizer with levels ``b1 < b2`` and threshold
``t`` has squared error ``sum_{x<t} (x-b1)^2 + sum_{x>=t} (x-b2)^2``; setting the derivatives to
zero gives, for ANY distribution of ``x``, ::

    t = (b1 + b2) / 2,     b1 = E[x | x < t],     b2 = E[x | x >= t]

(the two-level Lloyd-Max conditions), solved by ``iters`` fixed-point steps from ``t = mean``.
Per bucket, step and layer ``l`` (levels recomputed every time), with ``e`` the residual:

1. ``x = g + e`` (error feedback; ``ef = False`` drops it), 2. levels of ``x_l`` as above,
3. ``bit = [x >= t_l]``, ``Q(x) = b2_l if bit else b1_l``, 4. ``e <- x - Q(x)``.

Payload ``[b1_1..b1_L | b2_1..b2_L fp32 | 1-bit codes]``, ``c = 8L + ceil(N/8)``:
``allgather_traffic(c, W)``. Decoding sums ``Q`` of every rank in rank order, divides by ``W``.
"""

from __future__ import annotations

import torch

from privquant.errors import PrivQuantError
from privquant.train.gradcomp import bits as B
from privquant.train.gradcomp.base import GradCompressor, check_payload, fp32_bytes, fp32_from
from privquant.train.gradcomp.comm import Traffic, allgather_traffic


def binary_levels(x: torch.Tensor, seg: B.Segments, iters: int) -> tuple[torch.Tensor, ...]:
    """Per-layer (b1, b2, t) satisfying the two-level optimality conditions (fixed point)."""
    t = seg.mean(x)
    b1 = b2 = t
    for _ in range(iters):
        hi = x >= seg.expand(t)
        n_hi = seg.sum(hi.to(x.dtype))
        s_hi = seg.sum(torch.where(hi, x, 0.0))
        s_all = seg.sum(x)
        n_lo = seg.n - n_hi
        b2 = torch.where(n_hi > 0, s_hi / n_hi.clamp_min(1), t)
        b1 = torch.where(n_lo > 0, (s_all - s_hi) / n_lo.clamp_min(1), t)
        t = (b1 + b2) / 2
    return b1, b2, t


class BinGrad(GradCompressor):
    name = "bingrad"

    def __init__(self, *, iters: int = 8, ef: bool = True, **kw) -> None:
        if not 1 <= iters <= 100:
            raise PrivQuantError("bingrad: --iters must be in 1..100")
        self.iters, self.ef = int(iters), bool(ef)
        super().__init__(**kw)

    def options(self) -> dict:
        return {"iters": self.iters, "ef": self.ef}

    def compress(self, index: int, buf: torch.Tensor, seg: B.Segments) -> torch.futures.Future:
        n, nl, world = buf.numel(), seg.count, self.world
        st = self.state_for(index, seg, e=buf.new_zeros(n))
        x = buf + st["e"] if self.ef else buf.clone()
        b1, b2, t = binary_levels(x, seg, self.iters)
        bit = x >= seg.expand(t)
        if self.ef:
            st["e"].copy_(x - torch.where(bit, seg.expand(b2), seg.expand(b1)))
        payload = torch.cat([fp32_bytes(b1), fp32_bytes(b2), B.pack(bit, 1)])
        fut, outs = self.comm.allgather(payload)
        self.last_info[index] = {}

        def decode(_):
            acc = torch.zeros(n, dtype=torch.float32)
            for out in outs:
                lv = fp32_from(out[: 8 * nl])
                check_payload(bool(torch.isfinite(lv).all()), "non-finite BinGrad level")
                c = B.unpack(out[8 * nl :], 1, n).bool()
                acc += torch.where(c, seg.expand(lv[nl:]), seg.expand(lv[:nl]))
            return buf.copy_(acc / world)

        return fut.then(decode)

    def traffic(self, numel: int, seg: B.Segments, info: dict) -> Traffic:
        return allgather_traffic(8 * seg.count + B.packed_len(numel, 1), self.world)
