"""``maxpool``: max over each window, padding with the input's public lower bound.

Two-party protocol: :class:`privquant.protocols.maxpool.Maxpool` (a tree of secret comparisons
of differences ``a - b``, so the input's ring must hold every difference: a ``diff`` atom).
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F

from privquant.ops.base import OpKind, batched
from privquant.protocols.maxpool import MAXPOOL, MaxpoolSig
from privquant.protocols.primitives.geometry import pair


class MaxpoolKind(OpKind):
    name = "maxpool"
    attrs = ("kernel", "stride", "padding")
    protocols: ClassVar[dict] = {"privquant": MAXPOOL}

    def apply(self, op, ins, program):
        lo = program.tensors[op.inputs[0]].lo
        a = op.attrs
        kh, kw = pair(a["kernel"])
        ph, pw = pair(a["padding"])
        sh, sw = pair(a["stride"])
        x = F.pad(ins[0], (pw, pw, ph, ph), value=lo)
        return x.unfold(2, kh, sh).unfold(3, kw, sw).amax((-1, -2))

    def ring_atoms(self, op, program, t):
        return [("diff", t)]

    def ring_tensors(self, op):
        return [op.inputs[0], op.output]

    def signature(self, op, program, rings, batch):
        a = op.attrs
        xi = program.tensors[op.inputs[0]]
        return MaxpoolSig(
            batched(batch, xi.shape),
            pair(a["kernel"]),
            pair(a["stride"]),
            pair(a["padding"]),
            xi.lo,
            xi.hi,
            rings[op.inputs[0]],
            rings[op.output],
        )

    def sirnn(self, op, ctx):
        from privquant.baselines import sci

        kh, kw = pair(op.attrs["kernel"])
        step = sci.relu(ctx.cfg.width)
        steps = kh * kw - 1
        ctx.width[op.output] = ctx.cfg.width
        return sci.Bits(ctx.numel(op.output) * steps * step.bits, steps * step.rounds)


KIND = MaxpoolKind()
