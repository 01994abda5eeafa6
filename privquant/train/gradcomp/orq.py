"""ORQ (An Xu, Zhouyuan Huo, Heng Huang, arXiv 2002.11082): unbiased multi-level gradient
quantization with levels from the optimality condition.

Only the abstract was readable here, so the condition is derived, not transcribed. Levels
``b_0 < ... < b_s`` with ``b_0 = min x``, ``b_s = max x``; ``x`` in ``[b_k, b_{k+1})`` becomes
``b_{k+1}`` with probability ``(x - b_k) / (b_{k+1} - b_k)``, else ``b_k`` (unbiased), with
variance ``V = sum_k sum_{x in [b_k, b_{k+1})} (b_{k+1} - x)(x - b_k)``. Setting ``dV/db_i = 0``:
``sum_{[b_{i-1}, b_i)} (x - b_{i-1}) = sum_{[b_i, b_{i+1})} (b_{i+1} - x)``, which (the ``x`` terms
cancel) is the same as ::

    #{x in [b_{i-1}, b_i)} = sum_{x in [b_{i-1}, b_{i+1})} (b_{i+1} - x) / (b_{i+1} - b_{i-1})

-- the mass below ``b_i`` equals the mass that unbiased rounding between the two neighbours
would send down. For an empirical distribution ``V`` is convex piecewise linear in ``b_i``, so
``b_i`` is the order statistic at that count: one closed-form update per level, iterated in
Gauss-Seidel sweeps (``sweeps``) from uniform spacing. Per bucket, step and layer (levels
recomputed every time) on a sample of ``sample`` values drawn with the rank's RNG (``b_0, b_s``
are the exact min/max, so unbiasedness never depends on the sample).

Payload ``[L x (s+1) levels fp32 | codes of b = ceil(log2(s+1)) bits]``,
``c = 4L(s+1) + ceil(N b / 8)``: ``allgather_traffic(c, W)``. Decoding looks every rank's codes
up in its levels, sums in rank order, divides by ``W``.
"""

from __future__ import annotations

import torch

from privquant.errors import PrivQuantError
from privquant.train.gradcomp import bits as B
from privquant.train.gradcomp.base import GradCompressor, check_payload, fp32_bytes, fp32_from
from privquant.train.gradcomp.comm import Traffic, allgather_traffic


def optimal_levels(
    x: torch.Tensor, seg: B.Segments, s: int, sample: int, sweeps: int, gen: torch.Generator
) -> torch.Tensor:
    """(L, s+1) levels per layer satisfying the variance-optimality condition on a sample of
    ``sample`` values per layer (with replacement); ends are the layer's exact min and max."""
    lo, hi = seg.amin(x), seg.amax(x)
    starts = torch.cumsum(torch.tensor([0, *seg.sizes[:-1]]), 0)
    n = seg.n.to(torch.int64)
    pick = (torch.rand(seg.count, sample, generator=gen) * n[:, None]).to(torch.int64)
    y = torch.sort(x[starts[:, None] + pick.clamp(max=(n - 1)[:, None])], dim=1).values
    return levels_from_sorted(y.double(), lo.double(), hi.double(), s, sweeps).float()


def levels_from_sorted(
    y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, s: int, sweeps: int
) -> torch.Tensor:
    """Gauss-Seidel sweeps of the closed-form level update on sorted rows ``y`` (L, m)."""
    rows_n, m = y.shape
    p = torch.cat([y.new_zeros(rows_n, 1), torch.cumsum(y, 1)], 1)
    frac = torch.linspace(0, 1, s + 1, dtype=y.dtype)[None, :]
    b = lo[:, None] + (hi - lo)[:, None] * frac
    rows = torch.arange(rows_n)[:, None]
    for _ in range(sweeps):
        for i in range(1, s):
            left, right = b[:, i - 1 : i].contiguous(), b[:, i + 1 : i + 2].contiguous()
            a = torch.searchsorted(y, left)
            c = torch.searchsorted(y, right)
            cnt = (c - a).to(y.dtype)
            mass = p[rows, c] - p[rows, a]
            width = (right - left).clamp_min(1e-300)
            q = ((right * cnt - mass) / width).clamp(min=0).clamp(max=cnt)
            j = (a + torch.ceil(q).to(torch.int64)).clamp(max=(c - 1).clamp_min(0)).clamp(max=m - 1)
            cand = y[rows, j].clamp(min=left, max=right)
            b[:, i : i + 1] = torch.where(cnt > 0, cand, (left + right) / 2)
    b[:, 0], b[:, s] = lo, hi
    return b


class ORQ(GradCompressor):
    name = "orq"

    def __init__(self, *, levels: int = 4, sample: int = 1024, sweeps: int = 4, **kw) -> None:
        if not 2 <= levels <= 256:
            raise PrivQuantError("orq: --levels must be in 2..256")
        if sample < 2 or not 1 <= sweeps <= 100:
            raise PrivQuantError("orq: need --sample >= 2 and --sweeps in 1..100")
        self.levels, self.sample, self.sweeps = int(levels), int(sample), int(sweeps)
        self.bits = B.code_bits(self.levels)
        super().__init__(**kw)

    def options(self) -> dict:
        return {"levels": self.levels, "sample": self.sample, "sweeps": self.sweeps}

    def quantize(self, x: torch.Tensor, lv: torch.Tensor, seg: B.Segments) -> torch.Tensor:
        """Codes in [0, s]: unbiased stochastic rounding between adjacent levels."""
        s = self.levels - 1
        k = torch.zeros(x.numel(), dtype=torch.int64)
        for i in range(1, s):
            k += x >= seg.expand(lv[:, i])
        base = seg.ids * (s + 1) + k
        flat = lv.reshape(-1)
        lower, upper = flat[base], flat[base + 1]
        gap = upper - lower
        p = torch.where(gap > 0, (x - lower) / gap.clamp_min(1e-38), 0.0)
        return k + (torch.rand(x.shape, generator=self.gen) < p)

    def compress(self, index: int, buf: torch.Tensor, seg: B.Segments) -> torch.futures.Future:
        n, nl, world, m = buf.numel(), seg.count, self.world, self.levels
        lv = optimal_levels(buf, seg, m - 1, self.sample, self.sweeps, self.gen)
        codes = self.quantize(buf, lv, seg)
        payload = torch.cat([fp32_bytes(lv.reshape(-1)), B.pack(codes, self.bits)])
        fut, outs = self.comm.allgather(payload)
        self.last_info[index] = {}

        def decode(_):
            acc = torch.zeros(n, dtype=torch.float32)
            for out in outs:
                levels = fp32_from(out[: 4 * nl * m])
                check_payload(bool(torch.isfinite(levels).all()), "non-finite ORQ level")
                c = B.unpack(out[4 * nl * m :], self.bits, n)
                check_payload(bool((c < m).all()), "ORQ code out of range")
                acc += levels[seg.ids * m + c]
            return buf.copy_(acc / world)

        return fut.then(decode)

    def traffic(self, numel: int, seg: B.Segments, info: dict) -> Traffic:
        return allgather_traffic(
            4 * seg.count * self.levels + B.packed_len(numel, self.bits), self.world
        )
