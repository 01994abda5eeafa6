"""``conv2d``: ``y = conv2d(x, W, stride, padding, groups) + bias`` with integer W and bias.

W (``weight``, shape ``weight_shape`` = (O, C/groups, kh, kw)) and ``bias`` are the server's
secrets; ``w_bits``, the shape, stride, padding and groups are public. The output is an
accumulator computed modulo its ring (the inputs are shared in at least that ring).
Two-party protocol: :class:`privquant.protocols.linear.Linear` (weights masked once per model
load, one message of the masked input per inference).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from privquant.errors import PrivQuantError
from privquant.ops.base import OpKind, batched
from privquant.protocols.linear import LINEAR, LinearSig
from privquant.protocols.primitives.geometry import pair


class LinearLayerKind(OpKind):
    """Shared by conv2d and linear: weights and biases, public ``w_bits`` and ``weight_shape``."""

    secret = ("weight", "bias")
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": LINEAR}

    def check(self, op, program) -> None:
        w = op.arrays.get("weight")
        if w is not None and list(w.shape) != list(op.attrs.get("weight_shape", [])):
            raise PrivQuantError(f"op {op.name!r}: weight shape differs from its declaration")

    def weight_shape(self, op) -> tuple[int, ...]:
        w = tuple(int(v) for v in op.attrs.get("weight_shape", ()))
        return w or tuple(op.arrays["weight"].shape)

    @staticmethod
    def params(op) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.as_tensor(op.arrays["weight"].astype(np.int64))
        b = torch.as_tensor(op.arrays["bias"].astype(np.int64))
        return w, b

    def sirnn(self, op, ctx):
        from privquant.baselines import sci

        x = ctx.program.tensors[op.inputs[0]]
        y = ctx.program.tensors[op.output]
        w_shape = self.weight_shape(op)
        groups = int(op.attrs.get("groups", 1)) if self.name == "conv2d" else 1
        m = ctx.batch * (sci.numel(y.shape[1:]) if self.name == "conv2d" else 1)
        k = sci.numel(w_shape[1:])
        ctx.width[op.output] = sci.acc_width(ctx.cfg, k)
        return sci.linear_layer(
            m,
            k,
            w_shape[0] // groups,
            ctx.batch * sci.numel(x.shape),
            ctx.cfg,
            groups=groups,
            msb_known=x.lo >= 0,
        )


class Conv2dKind(LinearLayerKind):
    name = "conv2d"
    attrs = ("w_bits", "weight_shape", "stride", "padding")  # groups defaults to 1

    def apply(self, op, ins, program):
        w, b = self.params(op)
        a = op.attrs
        return F.conv2d(
            ins[0],
            w,
            b,
            stride=pair(a["stride"]),
            padding=pair(a["padding"]),
            groups=int(a.get("groups", 1)),
        )

    def signature(self, op, program, rings, batch):
        a = op.attrs
        return LinearSig(
            "conv2d",
            batched(batch, program.tensors[op.inputs[0]].shape),
            self.weight_shape(op),
            rings[op.output],
            pair(a.get("stride", 1)),
            pair(a.get("padding", 0)),
            int(a.get("groups", 1)),
            key=op.name,
        )


KIND = Conv2dKind()
