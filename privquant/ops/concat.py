"""``concat``: channel concatenation ``torch.cat([x_0, x_1, ...], dim=1)`` of tensors that share
one scale and one ring.

Float graph (:class:`CatGraph`): the concatenation owns one activation quantizer (its output's
scale) and, like a residual add, requantizes each input to that scale itself -- one ``requant``
op per input (a conv/linear feeding only concatenations and adds needs no quantizer of its own;
an already quantized input is rescaled), then the ``concat`` op joins the requantized integers.
Fake-quant quantizes the concatenated float tensor with the same scale, so both agree within the
requantization's 1 LSB.

Two-party: local -- each party concatenates its shares, reduced to the output's ring (every input
is shared in at least that ring: ``ring_linear``). Cost 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.base import LocalProtocol
from privquant.protocols.primitives import ring


@dataclass(frozen=True)
class ConcatSig:
    shapes: tuple[tuple[int, ...], ...]  # inputs, batch first
    ell: int


class Concat(LocalProtocol):
    """Each party concatenates its shares along the channel axis, mod ``2^ell``. Cost 0."""

    kind = "concat"

    def online(self, party, sig: ConcatSig, pre, *xs: torch.Tensor) -> torch.Tensor:
        if tuple(tuple(x.shape) for x in xs) != sig.shapes:
            raise PrivQuantError(f"concat: shares have shapes {[tuple(x.shape) for x in xs]}")
        return torch.cat([ring.reduce(x, sig.ell) for x in xs], 1)


CONCAT = Concat()

_CATS = (torch.cat, torch.concat, torch.concatenate)


def _cat_args(n):
    if n.op != "call_function" or n.target not in _CATS:
        return None
    seq = n.args[0] if n.args else n.kwargs.get("tensors")
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", n.kwargs.get("axis", 0))
    return seq, dim


class CatGraph(GraphKind):
    """``torch.cat([...], dim=1)`` on channels (per-sample dim 0)."""

    name = "cat"
    quantized = "always"
    rescales_inputs = True
    supported = (
        ("`torch.cat([...], dim=1)` (channels)", "local, inputs requantized to one scale"),
    )

    def capture(self, n, mods, src):
        args = _cat_args(n)
        if args is None:
            return None
        seq, dim = args
        if not isinstance(seq, (list, tuple)) or len(seq) < 1:
            raise PrivQuantError(f"{n.name!r}: torch.cat needs a list of tensors")
        if dim != 1:
            raise PrivQuantError(
                f"{n.name!r}: torch.cat is supported on the channel axis (dim=1) only, "
                f"not dim={dim}"
            )
        return QNode(n.name, "cat", [src(a) for a in seq])

    def signed(self, node, inputs_signed):
        return any(inputs_signed)

    def forward(self, node, xs, params=None):
        return torch.cat(xs, 1)

    def lower(self, node, ctx):
        ins = [ctx.tensor_of(i) for i in node.inputs]
        shapes = [ctx.info(t).shape for t in ins]
        if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes):
            raise PrivQuantError(f"cat {node.name!r}: inputs of shapes {shapes} do not concatenate")
        return ins

    def requant(self, node, ctx, outs, qz):
        from privquant.ir import Op

        parts = [
            ctx.requant(node.name, [t], qz, out=f"{node.name}#{i}") for i, t in enumerate(outs)
        ]
        infos = [ctx.info(t) for t in parts]
        shape = (sum(t.shape[0] for t in infos), *infos[0].shape[1:])
        s = infos[0].scale
        op = Op("concat", node.name, parts, node.name)
        return ctx.emit(
            op, shape, min(t.lo for t in infos), max(t.hi for t in infos), s, np.asarray(s)
        )

    def crypten(self, node, ins, ctx):
        return ctx.crypten.cat(ins, dim=1)


class ConcatKind(OpKind):
    name = "concat"
    graph = CatGraph()
    arity = None
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": CONCAT}

    def check(self, op, program):
        shapes = [program.tensors[t].shape for t in op.inputs]
        out = program.tensors[op.output].shape
        if (
            any(len(s) != len(out) or s[1:] != out[1:] for s in shapes)
            or sum(s[0] for s in shapes) != out[0]
        ):
            raise PrivQuantError(f"op {op.name!r}: input shapes {shapes} do not concatenate")

    def apply(self, op, ins, program):
        return torch.cat(ins, 1)

    def signature(self, op, program, rings, batch):
        shapes = tuple(batched(batch, program.tensors[t].shape) for t in op.inputs)
        return ConcatSig(shapes, rings[op.output])

    def sirnn(self, op, ctx):
        from privquant.baselines.sci import ZERO

        ctx.width[op.output] = max(ctx.width.get(t, ctx.cfg.width) for t in op.inputs)
        return ZERO


KIND = ConcatKind()
