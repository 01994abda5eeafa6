"""``conv2d``: ``y = conv2d(x, W, stride, padding, groups) + bias`` with integer W and bias.

W (``weight``, shape ``weight_shape`` = (O, C/groups, kh, kw)) and ``bias`` are the server's
secrets; ``w_bits``, the shape, stride, padding and groups are public. The output is an
accumulator computed modulo its ring (the inputs are shared in at least that ring).
Two-party protocol: :class:`privquant.protocols.linear.Linear` (weights masked once per model
load, one message of the masked input per inference).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from privquant.baselines import sci
from privquant.errors import PrivQuantError
from privquant.ir import Op, linear_bound
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.linear import LINEAR, LinearSig
from privquant.protocols.ot.linear import OT_LINEAR
from privquant.protocols.primitives.geometry import conv_out_hw, pair


def smallest_signed(a: np.ndarray) -> np.ndarray:
    """``a`` in the smallest signed integer dtype holding all its values (int8 for <= 8 bits)."""
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for dt in (np.int8, np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return a.astype(dt)
    return a.astype(np.int64)


class LayerGraph(GraphKind):
    """Shared by conv and linear graph nodes: BN-folded float weights, per-channel weight scales
    (per-tensor for the logit layer), lowered to an integer op with ``w_bits``-bit weights whose
    accumulator is bounded by ``K * wmax * max|x|`` (biases clipped to that bound)."""

    layer = True
    quantized = "layer"
    fuses_act = True
    op_kind = ""

    def out_shape(self, node, in_shape) -> tuple[int, ...]:
        raise NotImplementedError

    def lower(self, node, ctx):
        x = ctx.tensor_of(node.inputs[0])
        xin = ctx.info(x)
        if xin.scale is None:
            raise PrivQuantError(f"layer {node.name!r} reads an unquantized accumulator")
        w_shape = tuple(int(s) for s in node.weight.shape)
        attrs = {"w_bits": ctx.w_bits(node.name), "weight_shape": list(w_shape)}
        if self.op_kind == "conv2d":
            a = node.attrs
            attrs.update(
                stride=list(pair(a["stride"])),
                padding=list(pair(a["padding"])),
                groups=int(a["groups"]),
            )
        op = Op(self.op_kind, node.name, [x], f"{node.name}:acc", attrs)
        bmax = linear_bound(op, xin)
        params = ctx.int_params(node.name, xin.scale)
        if params is not None:  # the server's integers (absent when only costs are wanted)
            w_int, b_int = params
            op.arrays["weight"] = smallest_signed(w_int.numpy())
            op.arrays["bias"] = np.clip(b_int.double().numpy(), -bmax, bmax).astype(np.int64)
        s_acc = (xin.scale * ctx.w_scale(node.name)).reshape(-1)
        s_acc = np.broadcast_to(s_acc, (w_shape[0],))
        real = np.asarray(s_acc[0]) if ctx.is_final(node.name) else s_acc
        ctx.emit(op, self.out_shape(node, xin.shape), -2 * bmax, 2 * bmax, None, real)
        return [op.output]


def conv_padding(m: nn.Conv2d) -> list[int]:
    """Symmetric zero padding of ``m``: its ``padding``, or ``'valid'`` (0) and ``'same'`` (for odd
    kernels, ``(k - 1) // 2``; PyTorch allows ``'same'`` only with stride 1)."""
    if not isinstance(m.padding, str):
        return list(m.padding)
    if m.padding == "valid":
        return [0, 0]
    even = [k for k in m.kernel_size if k % 2 == 0]
    if even:
        raise PrivQuantError(
            f"conv with padding='same' and an even kernel {tuple(m.kernel_size)} pads "
            "asymmetrically: not supported; use an odd kernel or explicit padding"
        )
    return [(k - 1) // 2 for k in m.kernel_size]


class ConvGraph(LayerGraph):
    """``nn.Conv2d`` (zero padding incl. ``'same'`` for odd kernels, no dilation); a following
    BatchNorm2d is folded in."""

    name = "conv"
    op_kind = "conv2d"
    folds_bn = True
    supported = (
        (
            "`nn.Conv2d` (zero padding, `padding='same'` for odd kernels, groups, stride)",
            "linear protocol; a following `nn.BatchNorm2d` is folded in",
        ),
    )

    def fold_affine(self, node, scale, shift, axis):
        if axis not in (None, 3) or len(scale) not in (1, node.weight.shape[1]):
            return False
        if any(int(p) for p in node.attrs["padding"]) or int(node.attrs["groups"]) != 1:
            return False  # zero padding of the map's output is not zero padding of its input
        c = node.weight.shape[1]
        a = torch.as_tensor(np.broadcast_to(scale, (c,)).copy(), dtype=torch.float64)
        b = torch.as_tensor(np.broadcast_to(shift, (c,)).copy(), dtype=torch.float64)
        w = node.weight.double()
        node.bias = (node.bias.double() + (w * b.reshape(1, -1, 1, 1)).sum((1, 2, 3))).float()
        node.weight = (w * a.reshape(1, -1, 1, 1)).float()
        return True

    def capture(self, n, mods, src):
        if n.op != "call_module" or not isinstance(mods[n.target], nn.Conv2d):
            return None
        m = mods[n.target]
        if m.padding_mode != "zeros":
            raise PrivQuantError(
                f"conv {n.target!r}: padding_mode={m.padding_mode!r} is not supported "
                "(only zero padding)"
            )
        if m.dilation != (1, 1):
            raise PrivQuantError(f"conv {n.target!r}: dilation {m.dilation} is not supported")
        b = m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_channels)
        return QNode(
            n.target,
            "conv",
            [src(n.args[0])],
            weight=m.weight.detach().float(),
            bias=b,
            attrs={"stride": list(m.stride), "padding": conv_padding(m), "groups": m.groups},
        )

    def forward(self, node, xs, params=None):
        w, b = params
        a = node.attrs
        return F.conv2d(xs[0], w, b, a["stride"], a["padding"], 1, a["groups"])

    def out_shape(self, node, in_shape):
        w = node.weight.shape
        oh, ow = conv_out_hw(*in_shape[1:], w[2:], node.attrs["stride"], node.attrs["padding"])
        return (int(w[0]), oh, ow)

    def crypten(self, node, ins, ctx):
        a = node["attrs"]
        w, b = ctx.layer_params(node)
        wt = ctx.share_weight(w)
        bt = ctx.share_weight(b.reshape(1, -1, 1, 1))
        y = ins[0].conv2d(
            wt, stride=pair(a["stride"]), padding=pair(a["padding"]), groups=int(a.get("groups", 1))
        )
        return y + bt


class LinearLayerKind(OpKind):
    """Shared by conv2d and linear: weights and biases, public ``w_bits`` and ``weight_shape``."""

    secret = ("weight", "bias")
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": LINEAR}
    ot_protocols: ClassVar[dict] = {"privquant": OT_LINEAR}

    def check(self, op, program) -> None:
        w = op.arrays.get("weight")
        if w is not None and list(w.shape) != list(op.attrs.get("weight_shape", [])):
            raise PrivQuantError(f"op {op.name!r}: weight shape differs from its declaration")

    def weight_shape(self, op) -> tuple[int, ...]:
        w = tuple(int(v) for v in op.attrs.get("weight_shape", ()))
        return w or tuple(op.arrays["weight"].shape)

    @staticmethod
    def params(op) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.as_tensor(op.arrays["weight"].astype(np.int64))
        b = torch.as_tensor(op.arrays["bias"].astype(np.int64))
        return w, b

    def sirnn(self, op, ctx):
        x = ctx.program.tensors[op.inputs[0]]
        y = ctx.program.tensors[op.output]
        w_shape = self.weight_shape(op)
        groups = int(op.attrs.get("groups", 1)) if self.name == "conv2d" else 1
        m = ctx.batch * (sci.numel(y.shape[1:]) if self.name == "conv2d" else 1)
        k = sci.numel(w_shape[1:])
        b_a = ctx.width.get(op.inputs[0], ctx.cfg.width) if ctx.cfg.mixed else None
        b_w = int(op.attrs["w_bits"]) if ctx.cfg.mixed else None
        ctx.width[op.output] = sci.acc_width(ctx.cfg, k, b_a, b_w)
        return sci.linear_layer(
            m,
            k,
            w_shape[0] // groups,
            ctx.batch * sci.numel(x.shape),
            ctx.cfg,
            groups=groups,
            msb_known=x.lo >= 0,
            b_a=b_a,
            b_w=b_w,
        )


class Conv2dKind(LinearLayerKind):
    name = "conv2d"
    graph = ConvGraph()
    attrs = ("w_bits", "weight_shape", "stride", "padding")  # groups defaults to 1

    def apply(self, op, ins, program):
        w, b = self.params(op)
        a = op.attrs
        return F.conv2d(
            ins[0],
            w,
            b,
            stride=pair(a["stride"]),
            padding=pair(a["padding"]),
            groups=int(a.get("groups", 1)),
        )

    def signature(self, op, program, rings, batch):
        a = op.attrs
        return LinearSig(
            "conv2d",
            batched(batch, program.tensors[op.inputs[0]].shape),
            self.weight_shape(op),
            rings[op.output],
            pair(a.get("stride", 1)),
            pair(a.get("padding", 0)),
            int(a.get("groups", 1)),
            key=op.name,
            w_bits=int(a["w_bits"]),
        )


KIND = Conv2dKind()
