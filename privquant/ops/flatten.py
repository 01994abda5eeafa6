"""``flatten``: a per-sample reshape of each share, no traffic: (C, H, W) -> (C*H*W,) by default,
or to the per-sample shape in attribute ``shape`` (a view/reshape that keeps the batch axis).

Float graph: ``nn.Flatten()``, ``torch.flatten(x, 1)``, ``x.flatten(1)``, and ``x.view(...)`` /
``x.reshape(...)`` / ``torch.reshape`` whose first size is the batch -- ``x.size(0)``,
``x.shape[0]`` or ``-1`` (then the rest is the per-sample shape). A reshape that keeps the
per-sample shape is dropped; one to another shape needs a per-tensor scale (activations have one;
a layer's accumulator has per-channel scales and only flattens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from privquant.baselines.sci import ZERO
from privquant.errors import PrivQuantError
from privquant.ir import Op
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.base import LocalProtocol
from privquant.protocols.primitives import ring


@dataclass(frozen=True)
class ReshapeSig:
    x_shape: tuple[int, ...]
    out_shape: tuple[int, ...]  # batch first
    ell: int


class Reshape(LocalProtocol):
    """(N, ...) -> ``sig.out_shape`` on each share. Cost 0."""

    kind = "flatten"

    def online(self, party, sig: ReshapeSig, pre, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != tuple(sig.x_shape):
            raise PrivQuantError(f"reshape: share has shape {tuple(x.shape)}, not {sig.x_shape}")
        return ring.reduce(x.reshape(sig.out_shape), sig.ell)


RESHAPE = Reshape()

_VIEWS = ("view", "reshape")


def _flatten_dims(n, mods) -> tuple[int, int] | None:
    """(start_dim, end_dim) of a flatten node, or None."""
    if n.op == "call_module" and isinstance(mods[n.target], nn.Flatten):
        m = mods[n.target]
        return m.start_dim, m.end_dim
    if (n.op == "call_function" and n.target is torch.flatten) or (
        n.op == "call_method" and n.target == "flatten"
    ):
        start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
        end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
        return start, end
    return None


def _view_dims(n):
    """The size arguments of a view/reshape node, or None."""
    if n.op == "call_method" and n.target in _VIEWS:
        dims = n.args[1:] if len(n.args) > 1 else n.kwargs.get("shape", ())
    elif n.op == "call_function" and n.target is torch.reshape:
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("shape", ())
    else:
        return None
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    return list(dims)


class FlattenGraph(GraphKind):
    """Flatten and batch-preserving view/reshape: transparent on quantized integers."""

    name = "flatten"
    transparent = True
    commutes_with_act = True
    supported = (
        ("`nn.Flatten()`, `torch.flatten(x, 1)`, `x.flatten(1)`", "local"),
        (
            "`x.view(x.size(0), -1)`, `x.reshape(x.shape[0], ...)`, `x.view(-1, K)`, "
            "`x.squeeze(-1)`",
            "local (batch axis kept)",
        ),
    )

    def capture(self, n, mods, src):
        if n.op == "call_method" and n.target == "squeeze":
            dims = list(n.args[1:]) or [n.kwargs.get("dim")]
            if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = list(dims[0])
            if not dims or any(not isinstance(d, int) or d == 0 for d in dims):
                raise PrivQuantError(
                    f"{n.name!r}: squeeze needs explicit non-batch dims (e.g. x.squeeze(-1))"
                )
            return QNode(n.name, "flatten", [src(n.args[0])], attrs={"squeeze": dims})
        dims = _flatten_dims(n, mods)
        if dims is not None:
            if dims[0] != 1 or dims[1] != -1:
                raise PrivQuantError(
                    f"{n.name!r}: only flattening everything but the batch axis is supported "
                    f"(start_dim=1, end_dim=-1), not start_dim={dims[0]}, end_dim={dims[1]}"
                )
            return QNode(n.name, "flatten", [src(n.args[0])])
        sizes = _view_dims(n)
        if sizes is None:
            return None
        if not sizes or not (src.is_batch(sizes[0]) or sizes[0] == -1):
            raise PrivQuantError(
                f"{n.name!r}: a view/reshape must keep the batch axis first "
                "(x.size(0), x.shape[0] or -1)"
            )
        rest = sizes[1:]
        if any(not isinstance(d, int) for d in rest):
            raise PrivQuantError(
                f"{n.name!r}: per-sample sizes of a view/reshape must be integers or -1 "
                "(x.size(i) for i > 0 is not supported; use x.flatten(1))"
            )
        if sizes[0] == -1 and -1 in rest:
            raise PrivQuantError(f"{n.name!r}: view(-1, ...) needs the per-sample sizes")
        return QNode(n.name, "flatten", [src(n.args[0])], attrs={"shape": list(rest)})

    @staticmethod
    def target(node, shape) -> list[int] | None:
        """The node's per-sample target shape spec for an input of per-sample ``shape``."""
        if "squeeze" not in node.attrs:
            return node.attrs.get("shape")
        drop = {d - 1 if d > 0 else len(shape) + d for d in node.attrs["squeeze"]}
        if any(not 0 <= d < len(shape) for d in drop):
            raise PrivQuantError(f"squeeze {node.name!r}: dims out of range for {shape}")
        return [s for i, s in enumerate(shape) if not (i in drop and s == 1)]

    def forward(self, node, xs, params=None):
        shape = self.target(node, tuple(xs[0].shape[1:]))
        return xs[0].flatten(1) if shape is None else xs[0].reshape(xs[0].shape[0], *shape)

    def lower(self, node, ctx):
        x = ctx.tensor_of(node.inputs[0])
        xin = ctx.info(x)
        numel = int(np.prod(xin.shape))
        target = resolve_shape(self.target(node, xin.shape), xin.shape, node.name)
        if target == tuple(xin.shape):
            return [x]  # a view to the same shape: nothing to do
        sc = ctx.real(x)
        if target == (numel,):
            real = sc if np.ndim(sc) == 0 else np.repeat(sc, np.prod(xin.shape[1:]))
            op = Op("flatten", node.name, [x], node.name)
        else:
            if np.ndim(sc) and np.ptp(sc) > 0:
                raise PrivQuantError(
                    f"reshape {node.name!r} of a per-channel scaled accumulator: only flatten"
                )
            real = np.asarray(np.ravel(sc)[0]) if np.ndim(sc) else sc
            op = Op("flatten", node.name, [x], node.name, {"shape": list(target)})
        ctx.emit(op, target, xin.lo, xin.hi, xin.scale, real)
        return [op.output]

    def crypten(self, node, ins, ctx):
        a = node["attrs"]
        shape = a.get("shape")
        if "squeeze" in a:
            per = tuple(ins[0].size()[1:])
            drop = {d - 1 if d > 0 else len(per) + d for d in a["squeeze"]}
            shape = [s for i, s in enumerate(per) if not (i in drop and s == 1)]
        if shape is None:
            return ins[0].reshape(ins[0].size(0), -1)
        return ins[0].reshape(ins[0].size(0), *shape)


def resolve_shape(shape, in_shape, name: str) -> tuple[int, ...]:
    """The per-sample target shape (``-1`` resolved) of a reshape of ``in_shape``."""
    numel = int(np.prod(in_shape))
    if shape is None:
        return (numel,)
    shape = [int(d) for d in shape]
    known = int(np.prod([d for d in shape if d != -1])) if shape else 1
    if shape.count(-1) > 1 or any(d < -1 or d == 0 for d in shape):
        raise PrivQuantError(f"reshape {name!r}: invalid sizes {shape}")
    if -1 in shape:
        if known == 0 or numel % known:
            raise PrivQuantError(f"reshape {name!r}: {in_shape} does not reshape to {shape}")
        shape[shape.index(-1)] = numel // known
    if int(np.prod(shape)) != numel:
        raise PrivQuantError(
            f"reshape {name!r}: per-sample shape {tuple(in_shape)} cannot become {tuple(shape)} "
            "without changing the batch size"
        )
    return tuple(shape)


class FlattenKind(OpKind):
    name = "flatten"
    graph = FlattenGraph()
    ring_linear = True
    protocols: ClassVar[dict] = {"privquant": RESHAPE}

    def check(self, op, program):
        x, y = program.tensors[op.inputs[0]], program.tensors[op.output]
        if resolve_shape(op.attrs.get("shape"), x.shape, op.name) != tuple(y.shape):
            raise PrivQuantError(f"op {op.name!r}: output shape differs from the reshape's")

    def apply(self, op, ins, program):
        out = program.tensors[op.output].shape
        return ins[0].reshape(ins[0].shape[0], *out)

    def signature(self, op, program, rings, batch):
        x = batched(batch, program.tensors[op.inputs[0]].shape)
        return ReshapeSig(x, batched(batch, program.tensors[op.output].shape), rings[op.output])

    def sirnn(self, op, ctx):
        ctx.width[op.output] = ctx.width[op.inputs[0]]
        return ZERO


KIND = FlattenKind()
