"""``flatten``: (C, H, W) -> (C*H*W,) per sample; a reshape of each share, no traffic."""

from __future__ import annotations

from typing import ClassVar

from privquant.ops.base import OpKind, batched
from privquant.protocols.basic import FLATTEN, FlattenSig


class FlattenKind(OpKind):
    name = "flatten"
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": FLATTEN}

    def apply(self, op, ins, program):
        return ins[0].reshape(ins[0].shape[0], -1)

    def signature(self, op, program, rings, batch):
        return FlattenSig(batched(batch, program.tensors[op.inputs[0]].shape), rings[op.output])

    def sirnn(self, op, ctx):
        from privquant.baselines.sci import ZERO

        ctx.width[op.output] = ctx.width[op.inputs[0]]
        return ZERO


KIND = FlattenKind()
