"""Public affine maps ``y = x * a[c] + b[c]`` (per channel or scalar): a float-graph node kind that
lowers to its own activation quantizer's ``requant`` op (no op kind of its own).

What becomes one: input normalization inside the model (``(x - mean) / std`` with Python
numbers or registered buffers, any chain of ``+ - * /`` with constants), a BatchNorm that cannot
be folded into a conv/linear (a pre-activation residual block's BN on the residual stream), and
products with constants. Consecutive affine maps compose into one node at capture.

Quantization: the node's output is always requantized (one ``requant`` op whose per-channel
multipliers carry ``a[c] * s_in / s_out`` and whose offset carries ``b[c] / s_out``), and a
ReLU/ReLU6 right after it fuses into that op (BN -> ReLU). When the map has no activation and its
only user is a conv without padding or a linear layer (:meth:`GraphKind.fold_affine`), capture
folds it into that layer's float weights instead (``W' = W * a``, ``b' = b + W @ b``), so the
layer reads the raw input: exact for the float model and free. A padded conv does not take the
fold (zero padding of ``(x - mean) / std`` is not zero padding of ``x``): the map stays a requant.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn as nn

from privquant.errors import PrivQuantError
from privquant.ops.graph import GraphKind, QNode

_ADD = (operator.add, torch.add)
_SUB = (operator.sub, torch.sub)
_MUL = (operator.mul, torch.mul)
_DIV = (operator.truediv, torch.div, torch.true_divide)
_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "true_divide": "div"}


def _op_of(n) -> str | None:
    if n.op == "call_function":
        for name, fns in (("add", _ADD), ("sub", _SUB), ("mul", _MUL), ("div", _DIV)):
            if n.target in fns:
                return name
    if n.op == "call_method":
        return _METHODS.get(n.target)
    return None


def _vec(c) -> np.ndarray:
    """A constant as a per-channel vector (C,) or a scalar (1,); float64."""
    a = np.asarray(c.detach().double().numpy() if isinstance(c, torch.Tensor) else c, np.float64)
    if a.ndim == 0:
        return a.reshape(1)
    squeezed = a.reshape(-1)
    # per-channel: shapes (C,) on a (N, C) tensor, (C, 1, 1) / (1, C, 1, 1) / (1, C) etc.
    nonunit = [d for d in a.shape if d != 1]
    if len(nonunit) > 1:
        raise PrivQuantError(f"a constant of shape {tuple(a.shape)} is not per-channel")
    return squeezed


def _axis(c) -> int | None:
    """Position, counted from the last axis (1 = last), of a constant's one non-unit axis (None
    for a scalar-like constant); the map is per channel iff it equals the tensor's per-sample
    rank (the channel axis of ``(N, C, ...)``)."""
    if not isinstance(c, torch.Tensor):
        return None
    nonunit = [c.dim() - i for i, d in enumerate(c.shape) if d != 1]
    return nonunit[0] if nonunit else None


def bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """A BatchNorm's eval-mode map as ``(scale, shift)`` per channel."""
    inv = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.detach().double() - bn.running_mean.double() * inv
    return inv.numpy(), shift.numpy()


def _compose(a1, b1, a2, b2):
    """``(x * a1 + b1) * a2 + b2`` as ``(a, b)`` (broadcast per channel)."""
    a1, b1, a2, b2 = np.broadcast_arrays(a1, b1, a2, b2)
    return a1 * a2, b1 * a2 + b2


class AffineGraph(GraphKind):
    """``x * a + b`` with public per-channel ``a``, ``b`` (see the module docstring)."""

    name = "affine"
    quantized = "always"
    fuses_act = True
    supported = (
        (
            "`x + c`, `x - c`, `c - x`, `x * c`, `x / c` with constants (numbers, buffers), "
            "e.g. `(x - mean) / std`",
            "folded into the next conv (no padding) / linear, else requantization",
        ),
        (
            "`nn.BatchNorm1d/2d` not after a conv/linear (e.g. pre-activation blocks)",
            "requantization (+ fused ReLU)",
        ),
    )

    def capture(self, n, mods, src):
        if n.op == "call_module":
            m = mods[n.target]
            if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                return None
            a, b = bn_affine(m)
            return self._node(n, src, src(n.args[0]), a, b)
        op = _op_of(n)
        if op is None or len(n.args) != 2:
            return None
        x, c = n.args
        if not src.is_tensor(x) and src.is_tensor(c) and op in ("add", "mul", "sub"):
            x, c = c, x
            if op == "sub":  # c - x
                return self._const_sub(n, src, x, c)
        if not src.is_tensor(x) or src.is_tensor(c):
            return None
        v = src.const(c)
        if v is None:
            return None
        k = _vec(v)
        if op == "div" and np.any(k == 0):
            raise PrivQuantError(f"{n.name!r}: division by zero")
        a, b = {
            "add": (np.ones(1), k),
            "sub": (np.ones(1), -k),
            "mul": (k, np.zeros(1)),
            "div": (1.0 / k, np.zeros(1)),
        }[op]
        return self._node(n, src, src(x), a, b, _axis(v))

    def _const_sub(self, n, src, x, c):
        v = src.const(c)
        if v is None:
            return None
        return self._node(n, src, src(x), -np.ones(1), _vec(v), _axis(v))

    def _node(self, n, src, inp: str, a, b, axis: int | None = None):
        prev = src.node(inp)
        if prev is not None and prev.kind == self.name and not prev.act and src.sole_user(inp):
            a0, b0 = np.asarray(prev.attrs["scale"]), np.asarray(prev.attrs["shift"])
            a, b = _compose(a0, b0, np.asarray(a), np.asarray(b))
            prev.attrs.update(scale=a.tolist(), shift=b.tolist())
            if axis is not None:
                if prev.attrs.get("axis", axis) != axis:
                    raise PrivQuantError(f"{n.name!r}: constants broadcast along different axes")
                prev.attrs["axis"] = axis
            return prev  # composed into the previous map (an alias of it)
        a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
        attrs = {"scale": a.tolist(), "shift": b.tolist()}
        if axis is not None:
            attrs["axis"] = axis  # the constants' axis, counted from the last
        return QNode(n.name, self.name, [inp], attrs=attrs)

    def affine_map(self, node):
        a = np.asarray(node.attrs["scale"], np.float64)
        b = np.asarray(node.attrs["shift"], np.float64)
        return a, b, node.attrs.get("axis")

    @staticmethod
    def vectors(attrs: dict, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (ndim - 2)
        a = torch.tensor(attrs["scale"], dtype=torch.float32).reshape(shape)
        b = torch.tensor(attrs["shift"], dtype=torch.float32).reshape(shape)
        return a, b

    def forward(self, node, xs, params=None):
        self.check_axis(node, tuple(xs[0].shape[1:]))
        a, b = self.vectors(node.attrs, xs[0].dim())
        return xs[0] * a + b

    @staticmethod
    def check_axis(node, shape) -> None:
        axis = node.attrs.get("axis")
        if axis is not None and axis != len(shape):
            raise PrivQuantError(
                f"affine {node.name!r}: its constants broadcast along axis -{axis} of a "
                f"(N, {', '.join(map(str, shape))}) tensor, not along the channels; give them "
                "shape (C, 1, 1) or make them scalars"
            )

    def lower(self, node, ctx):
        x = ctx.tensor_of(node.inputs[0])
        shape = ctx.info(x).shape
        c = shape[0]
        self.check_axis(node, shape)
        n = len(node.attrs["scale"])
        if n not in (1, c):
            raise PrivQuantError(f"affine {node.name!r}: {n} constants for {c} channels")
        return [x]

    def requant(self, node, ctx, outs, qz):
        x = outs[0]
        a = np.asarray(node.attrs["scale"], np.float64)
        b = np.asarray(node.attrs["shift"], np.float64)
        real = np.asarray(ctx.real(x), np.float64) * a
        return ctx.requant(node.name, [x], qz, reals=[real], bias=b)

    def crypten(self, node, ins, ctx):
        a, b = self.vectors(node["attrs"], ins[0].dim())
        return ins[0] * a + b


GRAPH = AffineGraph()
