"""Gradient compression as ``torch.distributed`` DDP comm hooks (CPU, gloo).

One module per method, each a :class:`~privquant.train.gradcomp.base.GradCompressor` with its
source, steps and declared bytes in its docstring:

=========  ==========================================================  =====================
method     payload                                                     collective
=========  ==========================================================  =====================
none       fp32 buffer / W                                             all_reduce
fp16       fp16 buffer / W                                             all_reduce
terngrad   per-layer scalers + 2-bit codes (``summable``: shared       all_gather (all_reduce)
           scalers, codes summed in Z_256, ``private`` masks)
qsgd       per-chunk norms + ceil(log2(2s+1))-bit codes (``summable``)  all_gather (all_reduce)
dgc        top-k values + int32 indices, momentum in the hook          all_gather
bingrad    per-layer optimal binary levels + 1-bit codes, EF           all_gather
orq        per-layer optimal levels + stochastic codes                 all_gather
co3        low-bit float codes, zlib, EF with decay                    2 x all_gather
=========  ==========================================================  =====================

Usage::

    comp = make("qsgd", levels=7, bucket=512)
    comp.setup(ddp.process_group)          # binds the group (and agrees on mask keys if private)
    ddp.register_comm_hook(comp, hook)
    ...
    torch.save(comp.state_dict(), path)    # error feedback, momentum, RNG, step

Importing this package pulls in torch.distributed only: no two-party code, no CrypTen.
"""

from __future__ import annotations

from typing import Any

from privquant.errors import PrivQuantError
from privquant.train.gradcomp.base import GradCompressor, hook
from privquant.train.gradcomp.bingrad import BinGrad
from privquant.train.gradcomp.co3 import CO3
from privquant.train.gradcomp.dgc import DGC
from privquant.train.gradcomp.fp16 import FP16
from privquant.train.gradcomp.orq import ORQ
from privquant.train.gradcomp.qsgd import QSGD
from privquant.train.gradcomp.terngrad import TernGrad


class NoCompression(GradCompressor):
    """fp32 all_reduce of ``buffer / W`` (what DDP does without a hook), through the same
    accounting: ``allreduce_traffic(4N, 4, W, rank)``."""

    name = "none"

    def compress(self, index, buf, seg):
        return self._plain_allreduce(buf)

    def traffic(self, numel, seg, info):
        from privquant.train.gradcomp.comm import allreduce_traffic

        return allreduce_traffic(4 * numel, 4, self.world, self.rank)


METHODS: dict[str, type[GradCompressor]] = {
    "none": NoCompression,
    "fp16": FP16,
    "terngrad": TernGrad,
    "qsgd": QSGD,
    "dgc": DGC,
    "bingrad": BinGrad,
    "orq": ORQ,
    "co3": CO3,
}


def make(method: str, **options: Any) -> GradCompressor:
    """A compressor by name; unknown names or options raise PrivQuantError."""
    cls = METHODS.get(method)
    if cls is None:
        raise PrivQuantError(
            f"unknown gradient compression {method!r}; choose from {', '.join(METHODS)}"
        )
    try:
        return cls(**options)
    except TypeError as e:
        raise PrivQuantError(f"{method}: bad option ({e})") from None


__all__ = ["METHODS", "GradCompressor", "hook", "make"]
