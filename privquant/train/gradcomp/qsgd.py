"""QSGD (Alistarh et al., NeurIPS 2017, arXiv 1610.02132): stochastic quantization to ``s``
levels per bucket of ``d`` values, with fixed-width codes instead of Elias coding.

The flat bucket is cut into ``C = ceil(N/d)`` chunks ``v``; per chunk ``n_v = ||v||_2`` (``norm =
"l2"``, the paper's) or ``max |v_i|`` (``"max"``, QSGDinf); per element ``r = s |v_i| / n_v``,
``l = floor(r)``, ``xi = l + Bernoulli(r - l)``, ``code = sign(v_i) * xi`` in ``[-s, s]`` and
``Q(v_i) = n_v * code / s``: unbiased (``E[xi] = r``), with
``E||Q(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2``.

Payloads and declared bytes (``b = ceil(log2(2s + 1))`` bits per code; ``s = 7`` is "4-bit"):

* default (allgather; per-rank norms): ``[n_1..n_C fp32 | b-bit codes]``,
  ``c = 4C + ceil(N b / 8)`` -> ``allgather_traffic(c, W)``; decoding sums the ranks' ``Q(v)`` in
  rank order and divides by ``W``.
* ``summable``: shared norms ``n_v = max`` over ranks (blocking all_reduce(MAX) of ``C`` floats:
  ``allreduce_traffic(4C, 4, W, r)``; still unbiased since every ``|v_i| <= n_v``), then the codes
  summed in ``Z_256`` when ``2 W s + 1 <= 256`` (else int32 words): ``allreduce_traffic(N, 1, W,
  r)``; optionally masked (``private``). Decoding: ``n_v * sum / (s W)``.
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
    stochastic_round,
)
from privquant.train.gradcomp.comm import Traffic, allgather_traffic, allreduce_traffic

NORMS = ("l2", "max")


class QSGD(GradCompressor):
    name = "qsgd"

    def __init__(
        self, *, levels: int = 7, bucket: int = 512, norm: str = "max", summable=False, **kw
    ) -> None:
        if not 1 <= levels <= 127:
            raise PrivQuantError("qsgd: --levels must be in 1..127 (codes of at most 8 bits)")
        if bucket < 1:
            raise PrivQuantError("qsgd: --bucket must be >= 1")
        if norm not in NORMS:
            raise PrivQuantError(f"qsgd: --norm must be one of {', '.join(NORMS)}")
        self.levels, self.bucket, self.norm = int(levels), int(bucket), norm
        self.summable = bool(summable)
        self.bits = B.code_bits(2 * self.levels + 1)
        super().__init__(**kw)

    def options(self) -> dict:
        return {
            "levels": self.levels,
            "bucket": self.bucket,
            "norm": self.norm,
            "summable": self.summable,
            **super().options(),
        }

    def chunks(self, buf: torch.Tensor) -> torch.Tensor:
        n, d = buf.numel(), self.bucket
        pad = (-n) % d
        return torch.cat([buf, buf.new_zeros(pad)]).view(-1, d)

    def norms(self, v: torch.Tensor) -> torch.Tensor:
        return v.norm(dim=1) if self.norm == "l2" else v.abs().amax(dim=1)

    def quantize(self, v: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Signed codes in [-s, s] for chunks ``v`` (C, d) under ``norms`` (C,)."""
        s = self.levels
        r = torch.where(norms[:, None] > 0, v.abs() * s / norms.clamp_min(1e-38)[:, None], 0.0)
        xi = stochastic_round(r.clamp(max=s), self.gen)
        return torch.sign(v).to(torch.int64) * xi

    def compress(self, index: int, buf: torch.Tensor, seg: B.Segments) -> torch.futures.Future:
        n, world, s = buf.numel(), self.world, self.levels
        v = self.chunks(buf)
        nc = v.shape[0]
        norms = self.norms(v)
        self.last_info[index] = {}
        if self.summable:
            norms = self.comm.allreduce_now(norms.contiguous(), torch.distributed.ReduceOp.MAX)
            check_payload(bool(torch.isfinite(norms).all()), "non-finite shared QSGD norm")
            codes = self.quantize(v, norms).reshape(-1)[:n]
            fut, total = self.sum_codes(index, codes, ring_bits_for(world * s))

            def decode_sum(_):
                t = torch.cat([total().to(torch.float32), buf.new_zeros(nc * self.bucket - n)])
                return buf.copy_((t.view(nc, -1) * (norms / (s * world))[:, None]).reshape(-1)[:n])

            return fut.then(decode_sum)
        codes = self.quantize(v, norms).reshape(-1)[:n]
        payload = torch.cat([fp32_bytes(norms), B.pack(codes + s, self.bits)])
        fut, outs = self.comm.allgather(payload)

        def decode(_):
            acc = torch.zeros(nc * self.bucket, dtype=torch.float32)
            for out in outs:
                nv = fp32_from(out[: 4 * nc])
                check_payload(bool(torch.isfinite(nv).all() and (nv >= 0).all()), "QSGD norm")
                c = B.unpack(out[4 * nc :], self.bits, n)
                check_payload(bool((c <= 2 * s).all()), "QSGD code out of range")
                q = torch.cat([(c - s).to(torch.float32), acc.new_zeros(nc * self.bucket - n)])
                acc += (q.view(nc, -1) * (nv / s)[:, None]).reshape(-1)
            return buf.copy_(acc[:n] / world)

        return fut.then(decode)

    def traffic(self, numel: int, seg: B.Segments, info: dict) -> Traffic:
        w, r = self.world, self.rank
        nc = -(-numel // self.bucket)
        if self.summable:
            rb = ring_bits_for(w * self.levels)
            return allreduce_traffic(4 * nc, 4, w, r) + allreduce_traffic(
                numel * rb // 8, rb // 8, w, r
            )
        return allgather_traffic(4 * nc + B.packed_len(numel, self.bits), w)
