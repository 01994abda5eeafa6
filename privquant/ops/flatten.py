"""``flatten``: (C, H, W) -> (C*H*W,) per sample; a reshape of each share, no traffic."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from privquant.baselines.sci import ZERO
from privquant.ir import Op
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.basic import FLATTEN, FlattenSig


class FlattenGraph(GraphKind):
    """``nn.Flatten``, ``torch.flatten(x, 1)``, ``x.flatten(1)``: transparent."""

    name = "flatten"
    transparent = True

    def capture(self, n, mods, src):
        hit = (
            (n.op == "call_module" and isinstance(mods[n.target], nn.Flatten))
            or (n.op == "call_function" and n.target is torch.flatten)
            or (n.op == "call_method" and n.target == "flatten")
        )
        return QNode(n.name, "flatten", [src(n.args[0])]) if hit else None

    def forward(self, node, xs, params=None):
        return xs[0].flatten(1)

    def lower(self, node, ctx):
        x = ctx.tensor_of(node.inputs[0])
        xin = ctx.info(x)
        sc = ctx.real(x)
        real = sc if np.ndim(sc) == 0 else np.repeat(sc, np.prod(xin.shape[1:]))
        op = Op("flatten", node.name, [x], node.name)
        ctx.emit(op, (int(np.prod(xin.shape)),), xin.lo, xin.hi, xin.scale, real)
        return [op.output]

    def crypten(self, node, ins, ctx):
        return ins[0].reshape(ins[0].size(0), -1)


class FlattenKind(OpKind):
    name = "flatten"
    graph = FlattenGraph()
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": FLATTEN}

    def apply(self, op, ins, program):
        return ins[0].reshape(ins[0].shape[0], -1)

    def signature(self, op, program, rings, batch):
        return FlattenSig(batched(batch, program.tensors[op.inputs[0]].shape), rings[op.output])

    def sirnn(self, op, ctx):
        ctx.width[op.output] = ctx.width[op.inputs[0]]
        return ZERO


KIND = FlattenKind()
