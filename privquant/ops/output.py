"""``output``: the logits, real value ``y * scale`` (per-tensor scale, so argmax on integers is
exact); opened to the client alone (``protocols.basic.Output``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from privquant.baselines.sci import Bits
from privquant.errors import PrivQuantError
from privquant.ir import Op
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.basic import OUTPUT, OpenToSig
from privquant.protocols.transport.channel import CLIENT


class OutputGraph(GraphKind):
    """The model's output: the logits, which must have one per-tensor scale."""

    name = "output"
    supported = (
        (
            "the model's output: logits of a final conv/linear layer",
            "opened to the client (label or logits)",
        ),
    )

    def capture(self, n, mods, src):
        return QNode("output", "output", [src(n.args[0])]) if n.op == "output" else None

    def forward(self, node, xs, params=None):
        return xs[0]

    def lower(self, node, ctx):
        src = ctx.tensor_of(node.inputs[0])
        t, scale = ctx.info(src), ctx.real(src)
        if np.ndim(scale) and np.ptp(scale) > 0:
            raise PrivQuantError("logit layer must have a per-tensor scale")
        s = float(np.ravel(scale)[0])
        ctx.emit(Op("output", "output", [src], "logits"), t.shape, t.lo, t.hi, s, scale)
        return ["logits"]

    def crypten(self, node, ins, ctx):
        return ctx.reveal_to_client(ins[0])


class OutputKind(OpKind):
    name = "output"
    graph = OutputGraph()
    protocols: ClassVar[dict] = {"privquant": OUTPUT}

    def apply(self, op, ins, program):
        return ins[0]

    def ring_tensors(self, op):
        return [op.inputs[0]]

    def signature(self, op, program, rings, batch):
        x = op.inputs[0]
        return OpenToSig(batched(batch, program.tensors[x].shape), rings[x], CLIENT)

    def sirnn(self, op, ctx):
        tw = ctx.width.get(op.inputs[0], ctx.cfg.width)
        return Bits(ctx.numel(op.output) * tw, 1)


KIND = OutputKind()
