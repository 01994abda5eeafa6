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


def _is_mean(n) -> bool:
    return (n.op == "call_method" and n.target == "mean") or (
        n.op == "call_function" and n.target is torch.mean
    )


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
    supported = (
        (
            "`nn.AvgPool2d`, `F.avg_pool2d` (no ceil_mode, padding counted)",
            "local sum + requantization",
        ),
        (
            "`nn.AdaptiveAvgPool2d(1)`, `F.adaptive_avg_pool2d(x, 1)`, `x.mean((2, 3))`",
            "global average: local sum + requantization",
        ),
    )

    def capture(self, n, mods, src):
        if n.op == "call_module":
            m = mods[n.target]
            if isinstance(m, nn.AdaptiveAvgPool2d):
                return self._adaptive(n.target, m.output_size, src(n.args[0]))
            if not isinstance(m, nn.AvgPool2d):
                return None
            a = {
                "kernel_size": m.kernel_size,
                "stride": m.stride,
                "padding": m.padding,
                "ceil_mode": m.ceil_mode,
                "count_include_pad": m.count_include_pad,
                "divisor_override": m.divisor_override,
            }
            name = n.target
        elif n.op == "call_function" and n.target is F.adaptive_avg_pool2d:
            size = n.args[1] if len(n.args) > 1 else n.kwargs.get("output_size")
            return self._adaptive(n.name, size, src(n.args[0]))
        elif _is_mean(n):
            return self._mean(n, src)
        elif n.op == "call_function" and n.target is F.avg_pool2d:
            from privquant.ops.maxpool import pool_args

            names = (
                "kernel_size",
                "stride",
                "padding",
                "ceil_mode",
                "count_include_pad",
                "divisor_override",
            )
            a = pool_args(n, names, {"stride": None, "padding": 0, "count_include_pad": True})
            name = n.name
        else:
            return None
        pad = a["padding"] if isinstance(a["padding"], int) else max(a["padding"])
        if pad and not a.get("count_include_pad", True):
            raise PrivQuantError(f"{name!r}: count_include_pad=False is not supported")
        if a.get("ceil_mode") or a.get("divisor_override"):
            raise PrivQuantError(f"{name!r}: ceil_mode/divisor_override not supported")
        attrs = {
            "kernel": a["kernel_size"],
            "stride": a["stride"] or a["kernel_size"],
            "padding": a["padding"],
        }
        return QNode(name, "avgpool", [src(n.args[0])], attrs=attrs)

    @staticmethod
    def _adaptive(name, size, inp):
        if size not in (1, (1, 1), [1, 1]):
            raise PrivQuantError(
                f"{name!r}: only AdaptiveAvgPool2d(1) (global average pooling) is supported, "
                f"not output size {size}"
            )
        return QNode(name, "avgpool", [inp], attrs={"global": True})

    @staticmethod
    def _mean(n, src):
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
        dims = sorted(dims) if isinstance(dims, (list, tuple)) else dims
        if dims not in ([2, 3], [-2, -1]):
            raise PrivQuantError(
                f"{n.name!r}: mean is supported over the spatial axes (2, 3) only, not {dims}"
            )
        attrs = {"global": True} if keep else {"global": True, "flat": True}
        return QNode(n.name, "avgpool", [src(n.args[0])], attrs=attrs)

    def signed(self, node, inputs_signed):
        return inputs_signed[0]

    def forward(self, node, xs, params=None):
        if node.attrs.get("global"):
            return xs[0].mean((2, 3), keepdim=not node.attrs.get("flat"))
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
        real = np.asarray(ctx.real(x) / win)
        ctx.emit(op, (xin.shape[0], oh, ow), lo, hi, None, real)
        if not node.attrs.get("flat"):
            return [op.output]
        # x.mean((2, 3)) without keepdim: the (C, 1, 1) sums flattened to (C,)
        flat = Op("flatten", node.name, [op.output], f"{node.name}:flat")
        ctx.emit(flat, (xin.shape[0],), lo, hi, None, real)
        return [flat.output]

    def crypten(self, node, ins, ctx):
        a = node["attrs"]
        if a.get("global"):
            y = ins[0].avg_pool2d(tuple(ins[0].size()[2:]))
            return y.reshape(y.size(0), -1) if a.get("flat") else y
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
