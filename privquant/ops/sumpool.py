"""``sumpool``: window sums with zero padding (average pooling's divisor is folded into the next
requant; global average pooling is a sumpool whose window is the whole map).

Linear in its input: computed on each share modulo the output's ring, no traffic.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from privquant.baselines import sci
from privquant.errors import PrivQuantError
from privquant.ir import Op
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.basic import SUMPOOL, SumpoolSig
from privquant.protocols.primitives.geometry import conv_out_hw, pair


def sumpool(x: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """Window sums with zero padding (exact on int64)."""
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    x = F.pad(x, (pw, pw, ph, ph))
    return x.unfold(2, kh, sh).unfold(3, kw, sw).sum((-1, -2))


class AvgpoolGraph(GraphKind):
    """``nn.AvgPool2d`` (no ceil mode, padding counted) and ``nn.AdaptiveAvgPool2d(1)`` (global):
    a sumpool whose divisor is folded into the requant that always follows it."""

    name = "avgpool"
    quantized = "always"

    def capture(self, n, mods, src):
        if n.op != "call_module":
            return None
        m = mods[n.target]
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if m.output_size not in (1, (1, 1)):
                raise PrivQuantError(f"{n.target!r}: only AdaptiveAvgPool2d(1) is supported")
            return QNode(n.target, "avgpool", [src(n.args[0])], attrs={"global": True})
        if not isinstance(m, nn.AvgPool2d):
            return None
        pad = m.padding if isinstance(m.padding, int) else max(m.padding)
        if pad and not m.count_include_pad:
            raise PrivQuantError(f"{n.target!r}: count_include_pad=False is not supported")
        if m.ceil_mode or m.divisor_override:
            raise PrivQuantError(f"{n.target!r}: ceil_mode/divisor_override not supported")
        attrs = {"kernel": m.kernel_size, "stride": m.stride or m.kernel_size, "padding": m.padding}
        return QNode(n.target, "avgpool", [src(n.args[0])], attrs=attrs)

    def signed(self, node, inputs_signed):
        return inputs_signed[0]

    def forward(self, node, xs, params=None):
        if node.attrs.get("global"):
            return xs[0].mean((2, 3), keepdim=True)
        a = node.attrs
        return F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["padding"])

    def window(self, node, shape):
        _c, h, w = shape
        if node.attrs.get("global"):
            return (h, w), (h, w), (0, 0)
        return tuple(pair(node.attrs[k]) for k in ("kernel", "stride", "padding"))

    def lower(self, node, ctx):
        x = ctx.tensor_of(node.inputs[0])
        xin = ctx.info(x)
        kern, stride, pad = self.window(node, xin.shape)
        oh, ow = conv_out_hw(*xin.shape[1:], kern, stride, pad)
        attrs = {"kernel": list(kern), "stride": list(stride), "padding": list(pad)}
        op = Op("sumpool", node.name, [x], f"{node.name}:sum", attrs)
        win = kern[0] * kern[1]
        lo, hi = win * min(xin.lo, 0), win * max(xin.hi, 0)
        ctx.emit(op, (xin.shape[0], oh, ow), lo, hi, None, np.asarray(ctx.real(x) / win))
        return [op.output]

    def crypten(self, node, ins, ctx):
        a = node["attrs"]
        if a.get("global"):
            return ins[0].avg_pool2d(tuple(ins[0].size()[2:]))
        return ins[0].avg_pool2d(
            pair(a["kernel"]), stride=pair(a["stride"]), padding=pair(a["padding"])
        )


class SumpoolKind(OpKind):
    name = "sumpool"
    graph = AvgpoolGraph()
    attrs = ("kernel", "stride", "padding")
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": SUMPOOL}

    def apply(self, op, ins, program):
        a = op.attrs
        return sumpool(ins[0], a["kernel"], a["stride"], a["padding"])

    def signature(self, op, program, rings, batch):
        a = op.attrs
        x = batched(batch, program.tensors[op.inputs[0]].shape)
        return SumpoolSig(
            x, pair(a["kernel"]), pair(a["stride"]), pair(a["padding"]), rings[op.output]
        )

    def sirnn(self, op, ctx):
        x = ctx.program.tensors[op.inputs[0]]
        kh, kw = pair(op.attrs["kernel"])
        h = sci.clog2(kh * kw)
        w = ctx.width.get(op.inputs[0], ctx.cfg.width) if ctx.cfg.mixed else ctx.cfg.width
        ext = sci.z_extend(w, w + h, x.lo >= 0)
        ctx.width[op.output] = w + h
        return sci.Bits(ctx.numel(op.inputs[0]) * ext.bits, ext.rounds)


KIND = SumpoolKind()
