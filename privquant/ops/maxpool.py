"""``maxpool``: max over each window, padding with the input's public lower bound.

Two-party protocol: :class:`privquant.protocols.maxpool.Maxpool` (a tree of secret comparisons
of differences ``a - b``, so the input's ring must hold every difference: a ``diff`` atom).
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn as nn
import torch.nn.functional as F

from privquant.baselines import sci
from privquant.errors import PrivQuantError
from privquant.ir import Op
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.maxpool import MAXPOOL, MaxpoolSig
from privquant.protocols.ot.maxpool import OT_MAXPOOL
from privquant.protocols.primitives.geometry import conv_out_hw, pair


def pool_args(n, names: tuple[str, ...], defaults: dict) -> dict:
    """Bind a functional pooling call's arguments (after the input) to ``names``."""
    out = dict(defaults)
    out.update(dict(zip(names, n.args[1:])))
    out.update({k: v for k, v in n.kwargs.items() if k in names})
    return out


class MaxpoolGraph(GraphKind):
    """``nn.MaxPool2d`` / ``F.max_pool2d`` (no ceil mode, no dilation): transparent on quantized
    integers; a ReLU after it moves before it (``max`` commutes with monotone functions)."""

    name = "maxpool"
    transparent = True
    commutes_with_act = True
    supported = (
        (
            "`nn.MaxPool2d`, `F.max_pool2d` (no ceil_mode/dilation)",
            "comparison tree; `pool -> relu` is rewritten to `relu -> pool`",
        ),
    )

    def capture(self, n, mods, src):
        if n.op == "call_module" and isinstance(mods[n.target], nn.MaxPool2d):
            m = mods[n.target]
            a = {
                "kernel_size": m.kernel_size,
                "stride": m.stride,
                "padding": m.padding,
                "dilation": m.dilation,
                "ceil_mode": m.ceil_mode,
            }
            name = n.target
        elif n.op == "call_function" and n.target is F.max_pool2d:
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            a = pool_args(n, names, {"stride": None, "padding": 0, "dilation": 1})
            if a.get("return_indices"):
                raise PrivQuantError(f"{n.name!r}: max_pool2d with return_indices is not supported")
            name = n.name
        else:
            return None
        if a.get("ceil_mode") or a.get("dilation", 1) not in (1, (1, 1), [1, 1]):
            raise PrivQuantError(f"{name!r}: ceil_mode/dilation not supported")
        attrs = {
            "kernel": a["kernel_size"],
            "stride": a["stride"] or a["kernel_size"],
            "padding": a["padding"],
        }
        return QNode(name, "maxpool", [src(n.args[0])], attrs=attrs)

    def forward(self, node, xs, params=None):
        a = node.attrs
        return F.max_pool2d(xs[0], a["kernel"], a["stride"], a["padding"])

    def lower(self, node, ctx):
        x = ctx.tensor_of(node.inputs[0])
        xin = ctx.info(x)
        kern, stride, pad = (pair(node.attrs[k]) for k in ("kernel", "stride", "padding"))
        oh, ow = conv_out_hw(*xin.shape[1:], kern, stride, pad)
        attrs = {"kernel": list(kern), "stride": list(stride), "padding": list(pad)}
        op = Op("maxpool", node.name, [x], node.name, attrs)
        ctx.emit(op, (xin.shape[0], oh, ow), xin.lo, xin.hi, xin.scale, ctx.real(x))
        return [op.output]

    def crypten(self, node, ins, ctx):
        a = node["attrs"]
        return ins[0].max_pool2d(
            pair(a["kernel"]), padding=pair(a["padding"]), stride=pair(a["stride"])
        )


class MaxpoolKind(OpKind):
    name = "maxpool"
    graph = MaxpoolGraph()
    attrs = ("kernel", "stride", "padding")
    protocols: ClassVar[dict] = {"privquant": MAXPOOL}
    ot_protocols: ClassVar[dict] = {"privquant": OT_MAXPOOL}

    def apply(self, op, ins, program):
        lo = program.tensors[op.inputs[0]].lo
        a = op.attrs
        kh, kw = pair(a["kernel"])
        ph, pw = pair(a["padding"])
        sh, sw = pair(a["stride"])
        x = F.pad(ins[0], (pw, pw, ph, ph), value=lo)
        return x.unfold(2, kh, sh).unfold(3, kw, sw).amax((-1, -2))

    def ring_atoms(self, op, program, t):
        return [("diff", t)]

    def ring_tensors(self, op):
        return [op.inputs[0], op.output]

    def signature(self, op, program, rings, batch):
        a = op.attrs
        xi = program.tensors[op.inputs[0]]
        return MaxpoolSig(
            batched(batch, xi.shape),
            pair(a["kernel"]),
            pair(a["stride"]),
            pair(a["padding"]),
            xi.lo,
            xi.hi,
            rings[op.inputs[0]],
            rings[op.output],
        )

    def sirnn(self, op, ctx):
        kh, kw = pair(op.attrs["kernel"])
        w = ctx.width.get(op.inputs[0], ctx.cfg.width) if ctx.cfg.mixed else ctx.cfg.width
        step = sci.relu(w)
        steps = kh * kw - 1
        ctx.width[op.output] = w
        return sci.Bits(ctx.numel(op.output) * steps * step.bits, steps * step.rounds)


KIND = MaxpoolKind()
