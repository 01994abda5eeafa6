"""The integer program's data model: ops, tensor facts, their JSON form and public bounds.

Kept apart from :mod:`privquant.program` (the program, its executors and its dispatch through the
op table) so that the op kinds (:mod:`privquant.ops`) can build ops without importing the
program: ``ir`` <- ``ops`` <- ``program``, no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.protocols.primitives.ring import signed_bits

#: array names that hold the server's secrets (an op kind's ``secret`` is a subset of these)
SECRET_ARRAYS = ("weight", "bias")


@dataclass
class Op:
    """One step of the integer program.

    ``kind`` is a kind of :mod:`privquant.ops`; ``name`` is the source module's qualified name
    (layer scope for reports); ``attrs`` hold JSON-able public parameters; ``arrays`` hold integer
    parameters (``weight``, ``bias``: the server's secrets; ``mult*``, ``offset``: public).
    """

    kind: str
    name: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def secret_arrays(self) -> tuple[str, ...]:
        """The server's secret arrays this op holds (weights and biases): the arrays its op
        kind declares secret (``OpKind.secret``); never part of the public program."""
        return tuple(k for k in SECRET_ARRAYS if k in self.arrays)


@dataclass
class TensorInfo:
    """Public facts about one tensor: per-sample shape, integer bounds, real scale (or None)."""

    name: str
    shape: tuple[int, ...]
    lo: int
    hi: int
    scale: float | None = None

    @property
    def bits(self) -> int:
        return signed_bits(self.lo, self.hi)


# ---------------------------------------------------------------------- (de)serialization
def op_to_dict(op: Op, arrays) -> dict:
    """JSON form of an op; ``arrays`` is whatever the caller stores for them (values or names)."""
    return {
        "kind": op.kind,
        "name": op.name,
        "inputs": op.inputs,
        "output": op.output,
        "attrs": op.attrs,
        "arrays": arrays,
    }


def op_from_dict(d: dict, arrays: dict[str, np.ndarray]) -> Op:
    return Op(d["kind"], d["name"], list(d["inputs"]), d["output"], dict(d["attrs"]), arrays)


def tensors_to_dict(tensors: dict[str, TensorInfo]) -> dict:
    return {
        n: {"shape": list(t.shape), "lo": t.lo, "hi": t.hi, "scale": t.scale}
        for n, t in sorted(tensors.items())
    }


def tensors_from_dict(d: dict) -> dict[str, TensorInfo]:
    return {
        n: TensorInfo(n, tuple(v["shape"]), int(v["lo"]), int(v["hi"]), v["scale"])
        for n, v in d.items()
    }


# ---------------------------------------------------------------------- geometry helpers
def fan_in(op: Op) -> int:
    """K: number of products summed per linear output (weights per output channel)."""
    return int(np.prod(op.attrs["weight_shape"][1:]))


def weight_max(bits: int) -> int:
    """Largest |w| of a symmetric signed ``bits``-bit weight: ``2**(bits-1) - 1``."""
    return (1 << (bits - 1)) - 1


def linear_bound(op: Op, x: TensorInfo) -> int:
    """Public bound on |W x| for a conv/linear op: ``K * wmax * max|x|`` (also the bias clip)."""
    return fan_in(op) * weight_max(int(op.attrs["w_bits"])) * max(abs(x.lo), abs(x.hi))


def check_input(program, x) -> torch.Tensor:
    """Validate a client input batch: shape (N, *input_shape) or input_shape, values uint8."""
    t = torch.as_tensor(np.asarray(x))
    shape = tuple(program.input_shape)
    if t.numel() == 0:
        raise PrivQuantError("input is empty")
    if tuple(t.shape) == shape:
        t = t.unsqueeze(0)
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
        raise PrivQuantError(
            f"input has shape {tuple(t.shape)}; model {program.model!r} expects {shape} "
            f"or (N, {', '.join(map(str, shape))})"
        )
    if t.dtype != torch.uint8:
        if t.is_floating_point() or t.dtype == torch.bool:
            raise PrivQuantError(f"input dtype {t.dtype} is not an integer image (expected uint8)")
        if int(t.min()) < 0 or int(t.max()) > 255:
            raise PrivQuantError("input values must lie in [0, 255] (8-bit image)")
    return t.to(torch.int64)
