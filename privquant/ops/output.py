"""``output``: the logits, real value ``y * scale`` (per-tensor scale, so argmax on integers is
exact); opened to the client alone (``protocols.basic.Output``)."""

from __future__ import annotations

from typing import ClassVar

from privquant.ops.base import OpKind, batched
from privquant.protocols.basic import OUTPUT, OpenToSig
from privquant.protocols.transport.channel import CLIENT


class OutputKind(OpKind):
    name = "output"
    protocols: ClassVar[dict] = {"privquant": OUTPUT}

    def apply(self, op, ins, program):
        return ins[0]

    def ring_tensors(self, op):
        return [op.inputs[0]]

    def signature(self, op, program, rings, batch):
        x = op.inputs[0]
        return OpenToSig(batched(batch, program.tensors[x].shape), rings[x], CLIENT)

    def sirnn(self, op, ctx):
        from privquant.baselines.sci import Bits

        tw = ctx.width.get(op.inputs[0], ctx.cfg.width)
        return Bits(ctx.numel(op.output) * tw, 1)


KIND = OutputKind()
