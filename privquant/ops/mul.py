"""``mul``: elementwise product of two secret tensors, ``z = x * y`` (with broadcasting of the
per-sample shapes, e.g. a squeeze-and-excitation gate ``(C, 1, 1)`` against ``(C, H, W)``).

Float graph: ``x * y``, ``torch.mul(x, y)``, ``x.mul(y)`` with two tensors (a product with a
constant is a public affine map, :mod:`privquant.ops.affine`). Both factors must be quantized
(they are the outputs of activation quantizers); the product of the integers is exact, its real
scale is ``s_x * s_y``, and it is always requantized (like a residual add's sum).

Two-party protocol: :class:`privquant.protocols.mul.Mul` (Beaver triple from the dealer, one
exchange of ``d = x - a`` and ``e = y - b``: ``2*(nx + ny)*L`` online bits, ``nz*L`` offline
bits, 1 round; a square ``x * x`` opens ``d`` only); without a dealer (``ot``):
:class:`privquant.protocols.ot.mul.OtMul` (the cross terms ``x0*y1``, ``x1*y0`` by COT/Gilboa
products, one OT per bit of the smaller factor: ``2*na*L + nz*L*(L+1)`` online bits, 1 round;
see there why not Beaver triples by OT).
Ring: computed modulo the product's ring, so both factors are shared in at least that ring
(``ring_linear``).
"""

from __future__ import annotations

import operator
from typing import ClassVar

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.mul import MUL, MulSig
from privquant.protocols.ot.mul import OT_MUL


class MulGraph(GraphKind):
    """Product of two tensors (both quantized); requantized like a residual add."""

    name = "mul"
    quantized = "always"
    fuses_act = True
    supported = (
        ("`x * y`, `torch.mul`, `x.mul(y)` (two tensors, broadcasting)", "Beaver product"),
    )

    def capture(self, n, mods, src):
        hit = (n.op == "call_function" and n.target in (operator.mul, torch.mul)) or (
            n.op == "call_method" and n.target == "mul"
        )
        if not hit or len(n.args) != 2 or not all(src.is_tensor(a) for a in n.args):
            return None
        return QNode(n.name, "mul", [src(n.args[0]), src(n.args[1])])

    def signed(self, node, inputs_signed):
        return any(inputs_signed)

    def forward(self, node, xs, params=None):
        return xs[0] * xs[1]

    def lower(self, node, ctx):
        from privquant.ir import Op

        ins = [ctx.tensor_of(i) for i in node.inputs]
        infos = [ctx.info(t) for t in ins]
        if any(t.scale is None for t in infos):
            raise PrivQuantError(f"product {node.name!r} reads an unquantized accumulator")
        try:
            shape = tuple(torch.broadcast_shapes(infos[0].shape, infos[1].shape))
        except RuntimeError:
            raise PrivQuantError(
                f"product {node.name!r}: shapes {infos[0].shape} and {infos[1].shape} do not "
                "broadcast"
            ) from None
        if len(infos[0].shape) != len(infos[1].shape):
            raise PrivQuantError(f"product {node.name!r}: factors need the same number of dims")
        a, b = infos
        cands = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
        if ins[0] == ins[1]:
            cands.append(0 if a.lo <= 0 <= a.hi else min(a.lo * a.lo, a.hi * a.hi))
            cands = [c for c in cands if c >= 0]
        op = Op("mul", node.name, ins, f"{node.name}:prod")
        real = np.asarray(ctx.real(ins[0]) * ctx.real(ins[1]))
        ctx.emit(op, shape, min(cands), max(cands), None, real)
        return [op.output]

    def crypten(self, node, ins, ctx):
        return ins[0] * ins[1]


class MulKind(OpKind):
    name = "mul"
    graph = MulGraph()
    arity = 2
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": MUL}
    ot_protocols: ClassVar[dict] = {"privquant": OT_MUL}

    def check(self, op, program):
        xs = [program.tensors[t].shape for t in op.inputs]
        try:
            z = tuple(torch.broadcast_shapes(*xs))
        except RuntimeError:
            raise PrivQuantError(f"op {op.name!r}: factor shapes {xs} do not broadcast") from None
        if z != tuple(program.tensors[op.output].shape):
            raise PrivQuantError(f"op {op.name!r}: product shape differs from its declaration")

    def apply(self, op, ins, program):
        return ins[0] * ins[1]

    def signature(self, op, program, rings, batch):
        x, y = (batched(batch, program.tensors[t].shape) for t in op.inputs)
        return MulSig(x, y, rings[op.output], op.inputs[0] == op.inputs[1])

    def sirnn(self, op, ctx):
        """SiRNN-style: each party's share times the other's by COT-based products (two
        ``K = 1`` matmuls of width W, with SiRNN's extension and truncation back to W)."""
        from privquant.baselines import sci

        n = ctx.numel(op.output)
        one = sci.linear_layer(n, 1, 1, n, ctx.cfg)
        ctx.width[op.output] = sci.acc_width(ctx.cfg, 1)
        return sci.Bits(2 * one.bits, one.rounds)


KIND = MulKind()
