"""Helpful errors for operations capture cannot map: the qualified name of what the model called
(``torch.nn.functional.layer_norm``, ``torch.Tensor.transpose``, ``torch.nn.LayerNorm``), where
in the model it sits (the module path from torch.fx's module stack) and a hint -- what to use
instead, or that it is planned.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from privquant.errors import PrivQuantError

_PLAIN = (
    "is not supported; the supported operations are listed in the README ('Supported operations')"
)
_NORM = (
    "needs a secret mean, variance and division per sample: not supported (planned); use "
    "BatchNorm (folded or a public affine map) or remove it"
)
_SOFTMAX = (
    "is supported only as the model's last op (it is then dropped: the private output is the "
    "logits, argmax unchanged); attention-style softmax needs secret exponentials and division "
    "(planned)"
)
_AXES = (
    "moves data between axes; only batch-preserving view/reshape/flatten are supported "
    "(planned: transposes are free on shares but need a per-tensor scale)"
)
_DIVIDE = "divides by a secret: not supported; divide by constants only ((x - mean) / std)"

HINTS = {
    "torch.nn.LayerNorm": _NORM,
    "torch.nn.functional.layer_norm": _NORM,
    "torch.nn.GroupNorm": _NORM,
    "torch.nn.functional.group_norm": _NORM,
    "torch.nn.InstanceNorm2d": _NORM,
    "torch.nn.functional.instance_norm": _NORM,
    "torch.nn.Softmax": _SOFTMAX,
    "torch.nn.LogSoftmax": _SOFTMAX,
    "torch.nn.functional.softmax": _SOFTMAX,
    "torch.nn.functional.log_softmax": _SOFTMAX,
    "torch.softmax": _SOFTMAX,
    "torch.log_softmax": _SOFTMAX,
    "torch.Tensor.softmax": _SOFTMAX,
    "torch.Tensor.log_softmax": _SOFTMAX,
    "torch.Tensor.transpose": _AXES,
    "torch.Tensor.permute": _AXES,
    "torch.transpose": _AXES,
    "torch.permute": _AXES,
    "torch.Tensor.size": (
        "is supported only as the batch size of a view/reshape (x.view(x.size(0), -1))"
    ),
    "operator.truediv": _DIVIDE,
    "torch.div": _DIVIDE,
    "operator.getitem": "(indexing/slicing a tensor) is not supported; use whole tensors",
    "torch.nn.Upsample": "is not supported (planned: nearest upsampling is local on shares)",
    "torch.nn.functional.interpolate": (
        "is not supported (planned: nearest upsampling is local on shares)"
    ),
    "torch.nn.MultiheadAttention": "needs secret products and softmax: not supported (planned)",
    "torch.matmul": (
        "of two secrets is not supported (planned); products with weights use nn.Linear"
    ),
    "torch.nn.functional.linear": "is supported as nn.Linear modules only",
    "torch.nn.functional.conv2d": "is supported as nn.Conv2d modules only",
}

_NAMESPACES = (
    (F, "torch.nn.functional"),
    (torch, "torch"),
    (torch.special, "torch.special"),
    (operator, "operator"),
    (math, "math"),
)


def qualified_name(n: fx.Node, mods) -> str:
    """``torch.nn.GELU``, ``torch.nn.functional.gelu``, ``torch.Tensor.size``, ``operator.sub``."""
    if n.op == "call_module":
        cls = type(mods[n.target])
        if getattr(nn, cls.__name__, None) is cls:
            return f"torch.nn.{cls.__name__}"
        return f"{cls.__module__}.{cls.__qualname__}"
    if n.op == "call_method":
        return f"torch.Tensor.{n.target}"
    if n.op == "call_function":
        t = n.target
        for ns, prefix in _NAMESPACES:
            name = getattr(t, "__name__", None)
            if name and getattr(ns, name, None) is t:
                return f"{prefix}.{name}"
        for ns, prefix in _NAMESPACES:  # e.g. a function whose __name__ differs (boolean_dispatch)
            for attr in dir(ns):
                if not attr.startswith("_") and getattr(ns, attr, None) is t:
                    return f"{prefix}.{attr}"
        mod = getattr(t, "__module__", None) or "builtins"
        return f"{mod}.{getattr(t, '__qualname__', repr(t))}"
    return f"{n.op} {n.target}"


def module_path(n: fx.Node) -> str | None:
    """The module path of the submodule whose forward issued ``n`` ('' = the model itself)."""
    if n.op == "call_module":
        return str(n.target)
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    return f"{path} ({cls.__name__})" if isinstance(cls, type) else str(path)


def unsupported(n: fx.Node, mods, model: str) -> PrivQuantError:
    """The error for an fx node no graph kind captures."""
    what = qualified_name(n, mods)
    where = module_path(n)
    place = f"module {where!r}" if where else "the model's own forward"
    hint = HINTS.get(what, _PLAIN)
    return PrivQuantError(
        f"unsupported operation {what} in {place} (node {n.name!r}) of {model!r}: {what} {hint}"
    )


__all__ = ["HINTS", "module_path", "qualified_name", "unsupported"]
