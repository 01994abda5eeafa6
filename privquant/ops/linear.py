"""``linear``: ``y = x @ W.T + bias`` (W: (O, K) integers, the server's secret with ``bias``).

Same protocol and conventions as :mod:`privquant.ops.conv2d`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from privquant.ops.base import batched
from privquant.ops.conv2d import LayerGraph, LinearLayerKind
from privquant.ops.graph import QNode
from privquant.protocols.linear import LinearSig


class LinearGraph(LayerGraph):
    """``nn.Linear``; a following BatchNorm1d is folded in."""

    name = "linear"
    op_kind = "linear"
    folds_bn = True
    supported = (("`nn.Linear`", "linear protocol; a following `nn.BatchNorm1d` is folded in"),)

    def fold_affine(self, node, scale, shift, axis):
        k = node.weight.shape[1]
        if axis not in (None, 1) or len(scale) not in (1, k) or len(shift) not in (1, k):
            return False
        a = torch.as_tensor(np.broadcast_to(scale, (k,)).copy(), dtype=torch.float64)
        b = torch.as_tensor(np.broadcast_to(shift, (k,)).copy(), dtype=torch.float64)
        w = node.weight.double()
        node.bias = (node.bias.double() + w @ b).float()
        node.weight = (w * a.reshape(1, -1)).float()
        return True

    def capture(self, n, mods, src):
        if n.op != "call_module" or not isinstance(mods[n.target], nn.Linear):
            return None
        m = mods[n.target]
        b = m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_features)
        return QNode(n.target, "linear", [src(n.args[0])], weight=m.weight.detach().float(), bias=b)

    def forward(self, node, xs, params=None):
        w, b = params
        return F.linear(xs[0], w, b)

    def out_shape(self, node, in_shape):
        return (int(node.weight.shape[0]),)

    def crypten(self, node, ins, ctx):
        w, b = ctx.layer_params(node)
        wt = ctx.share_weight(w.t().contiguous())
        bt = ctx.share_weight(b.reshape(1, -1))
        return ins[0].matmul(wt) + bt


class LinearKind(LinearLayerKind):
    name = "linear"
    graph = LinearGraph()
    attrs = ("w_bits", "weight_shape")

    def apply(self, op, ins, program):
        w, b = self.params(op)
        return ins[0] @ w.T + b

    def signature(self, op, program, rings, batch):
        x = batched(batch, program.tensors[op.inputs[0]].shape)
        return LinearSig(
            "linear",
            x,
            self.weight_shape(op),
            rings[op.output],
            key=op.name,
            w_bits=int(op.attrs["w_bits"]),
        )


KIND = LinearKind()
