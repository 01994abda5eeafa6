"""``sumpool``: window sums with zero padding (average pooling's divisor is folded into the next
requant; global average pooling is a sumpool whose window is the whole map).

Linear in its input: computed on each share modulo the output's ring, no traffic.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from privquant.ops.base import OpKind, batched
from privquant.protocols.basic import SUMPOOL, SumpoolSig
from privquant.protocols.primitives.geometry import pair


def sumpool(x: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """Window sums with zero padding (exact on int64)."""
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    x = F.pad(x, (pw, pw, ph, ph))
    return x.unfold(2, kh, sh).unfold(3, kw, sw).sum((-1, -2))


class SumpoolKind(OpKind):
    name = "sumpool"
    attrs = ("kernel", "stride", "padding")
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": SUMPOOL}

    def apply(self, op, ins, program):
        a = op.attrs
        return sumpool(ins[0], a["kernel"], a["stride"], a["padding"])

    def signature(self, op, program, rings, batch):
        a = op.attrs
        x = batched(batch, program.tensors[op.inputs[0]].shape)
        return SumpoolSig(
            x, pair(a["kernel"]), pair(a["stride"]), pair(a["padding"]), rings[op.output]
        )

    def sirnn(self, op, ctx):
        from privquant.baselines import sci

        x = ctx.program.tensors[op.inputs[0]]
        kh, kw = pair(op.attrs["kernel"])
        h = sci.clog2(kh * kw)
        ext = sci.z_extend(ctx.cfg.width, ctx.cfg.width + h, x.lo >= 0)
        ctx.width[op.output] = ctx.cfg.width + h
        return sci.Bits(ctx.numel(op.inputs[0]) * ext.bits, ext.rounds)


KIND = SumpoolKind()
