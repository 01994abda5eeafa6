"""``linear``: ``y = x @ W.T + bias`` (W: (O, K) integers, the server's secret with ``bias``).

Same protocol and conventions as :mod:`privquant.ops.conv2d`.
"""

from __future__ import annotations

from privquant.ops.base import batched
from privquant.ops.conv2d import LinearLayerKind
from privquant.protocols.linear import LinearSig


class LinearKind(LinearLayerKind):
    name = "linear"
    attrs = ("w_bits", "weight_shape")

    def apply(self, op, ins, program):
        w, b = self.params(op)
        return ins[0] @ w.T + b

    def signature(self, op, program, rings, batch):
        x = batched(batch, program.tensors[op.inputs[0]].shape)
        return LinearSig("linear", x, self.weight_shape(op), rings[op.output], key=op.name)


KIND = LinearKind()
