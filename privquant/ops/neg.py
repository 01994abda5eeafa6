"""``neg``: elementwise negation ``y = -x`` (``-x``, ``torch.neg``, ``x.neg()`` in a model).

Added as the demonstration that an op kind is one module: float-graph capture, fake-quant
forward and lowering (the :class:`NegGraph` facet), plaintext semantics, ring atoms, signature,
the two-party protocol (local: each party negates its share, ``-(x0 + x1) = (-x0) + (-x1) mod
2^ell``; cost 0) and the SiRNN-style cost (0) all live here. Negation acts on quantized integers
with the input's scale: bounds ``[-hi, -lo]``; it is transparent for quantization (no requant).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar

import torch

from privquant.baselines.sci import ZERO
from privquant.ir import Op
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.base import LocalProtocol
from privquant.protocols.primitives import ring


@dataclass(frozen=True)
class NegSig:
    shape: tuple[int, ...]
    ell: int


class Neg(LocalProtocol):
    """Each party negates its share modulo ``2^ell``. Cost 0."""

    kind = "neg"

    def online(self, party, sig: NegSig, pre, x: torch.Tensor) -> torch.Tensor:
        return ring.reduce(-ring.reduce(x, sig.ell), sig.ell)


NEG = Neg()


class NegGraph(GraphKind):
    """``-x``, ``torch.neg(x)``, ``x.neg()``: transparent on quantized integers."""

    name = "neg"
    transparent = True
    supported = (("`-x`, `torch.neg`, `x.neg()`", "local"),)

    def capture(self, n, mods, src):
        hit = (n.op == "call_function" and n.target in (operator.neg, torch.neg)) or (
            n.op == "call_method" and n.target == "neg"
        )
        return QNode(n.name, "neg", [src(n.args[0])]) if hit else None

    def signed(self, node, inputs_signed):
        return True

    def forward(self, node, xs, params=None):
        return -xs[0]

    def lower(self, node, ctx):
        x = ctx.tensor_of(node.inputs[0])
        xin = ctx.info(x)
        op = Op("neg", node.name, [x], node.name)
        ctx.emit(op, xin.shape, -xin.hi, -xin.lo, xin.scale, ctx.real(x))
        return [op.output]

    def crypten(self, node, ins, ctx):
        return -ins[0]


class NegKind(OpKind):
    name = "neg"
    graph = NegGraph()
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": NEG}

    def apply(self, op, ins, program):
        return -ins[0]

    def signature(self, op, program, rings, batch):
        return NegSig(batched(batch, program.tensors[op.output].shape), rings[op.output])

    def sirnn(self, op, ctx):
        ctx.width[op.output] = ctx.width[op.inputs[0]]
        return ZERO


KIND = NegKind()
