"""fp16: the bucket divided by ``W``, cast to IEEE half, summed by all_reduce (PyTorch's own
``fp16_compress_hook``, pytorch#57410: divide before the sum so it cannot overflow).

Declared bytes per bucket of ``N`` gradients: ``allreduce_traffic(2N, 2, W, rank)`` -- a ring
allreduce of ``2N`` bytes, i.e. a payload of ``2(W-1)/W * 2N`` per rank: 2x less than fp32.
"""

from __future__ import annotations

import torch

from privquant.train.gradcomp.base import GradCompressor
from privquant.train.gradcomp.bits import Segments
from privquant.train.gradcomp.comm import Traffic, allreduce_traffic


class FP16(GradCompressor):
    name = "fp16"

    def compress(self, index: int, buf: torch.Tensor, seg: Segments) -> torch.futures.Future:
        half = buf.div(self.world).to(torch.float16)
        fut = self.comm.allreduce(half)

        def decode(f):
            return buf.copy_(f.value()[0])

        return fut.then(decode)

    def traffic(self, numel: int, seg: Segments, info: dict) -> Traffic:
        return allreduce_traffic(2 * numel, 2, self.world, self.rank)
