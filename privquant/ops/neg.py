"""``neg``: elementwise negation ``y = -x`` (``-x``, ``torch.neg``, ``x.neg()`` in a model).

Added as the demonstration that an op kind is one module: float-graph capture, fake-quant
forward and lowering (the :class:`NegGraph` facet), plaintext semantics, ring atoms, signature,
the two-party protocol (local: each party negates its share, ``-(x0 + x1) = (-x0) + (-x1) mod
2^ell``; cost 0) and the SiRNN-style cost (0) all live here. Negation acts on quantized integers
with the input's scale: bounds ``[-hi, -lo]``; it is transparent for quantization (no requant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from privquant.ops.base import OpKind, batched
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


class NegKind(OpKind):
    name = "neg"
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": NEG}

    def apply(self, op, ins, program):
        return -ins[0]

    def signature(self, op, program, rings, batch):
        return NegSig(batched(batch, program.tensors[op.output].shape), rings[op.output])

    def sirnn(self, op, ctx):
        from privquant.baselines.sci import ZERO

        ctx.width[op.output] = ctx.width[op.inputs[0]]
        return ZERO


KIND = NegKind()
