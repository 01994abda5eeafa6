"""The integer program: the lowered, integer-only form of a quantized network.

This is the contract between quantization (which produces it), the artifact (which stores it) and
every executor (plaintext here; two-party in ``privquant.runtime``). All values are integers; the
real value of an activation is ``q * scale``.

Ops (per-sample shapes, the batch dimension is implicit and leading):

==========  ==================================================================================
``input``   the client's image, uint8 values in [0, 255] (real value ``q / 255``)
``conv2d``  ``y = conv2d(x, W, stride, padding, groups) + bias``  (W, bias integers)
``linear``  ``y = x @ W.T + bias``
``sumpool`` sum over each window (average pooling's divisor is folded into the next requant);
            zero padding; global average pooling is a sumpool whose window is the whole map
``maxpool`` max over each window (padding with the input's lower bound)
``flatten`` (C, H, W) -> (C*H*W,)
``requant`` ``y = clip(floor((sum_i m_i[c] * x_i + offset[c]) / 2**shift), lo, hi)``: the one
            nonlinear step between two linear layers: dyadic rescale with round-half-up (offset
            holds ``2**(shift-1)``), ReLU (``lo = 0``) and the upper clip, residual adds (several
            inputs, each with its own multiplier) all in one op
``output``  the logits, real value ``y * scale`` (per-tensor scale, so argmax on integers is exact)
==========  ==================================================================================

Bounds. Every tensor carries integer bounds ``[lo, hi]`` derived from *public* quantities only
(bit widths, fan-in, public multipliers), never from weight values, so ring widths reveal nothing
about the weights: a linear output is bounded by ``K * wmax * max|x| + bmax`` with
``wmax = 2**(b_w-1) - 1`` and biases clipped at lowering to ``|bias| <= bmax = K * wmax * max|x|``.
:func:`ring_bits` turns bounds into the per-tensor ring widths used by the two-party runtime.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from privquant.errors import PrivQuantError

OP_KINDS = ("input", "conv2d", "linear", "sumpool", "maxpool", "flatten", "requant", "output")
# per op kind: (number of inputs or None for >= 1, required attrs, required public arrays)
_REQUIRED = {
    "input": (0, (), ()),
    "conv2d": (1, ("w_bits", "weight_shape", "stride", "padding"), ()),  # groups defaults to 1
    "linear": (1, ("w_bits", "weight_shape"), ()),
    "sumpool": (1, ("kernel", "stride", "padding"), ()),
    "maxpool": (1, ("kernel", "stride", "padding"), ()),
    "flatten": (1, (), ()),
    "requant": (None, ("shift", "lo", "hi"), ("offset",)),
    "output": (1, (), ()),
}
# ops that are linear in their (shared) inputs: computed mod 2**ell of their output's ring
LINEAR_KINDS = ("conv2d", "linear", "sumpool", "flatten")


def signed_bits(lo: int, hi: int) -> int:
    """Smallest ell with ``-2**(ell-1) <= lo`` and ``hi <= 2**(ell-1) - 1`` (at least 2)."""
    ell = 2
    while lo < -(1 << (ell - 1)) or hi > (1 << (ell - 1)) - 1:
        ell += 1
    return ell


@dataclass
class Op:
    """One step of the integer program.

    ``kind`` is one of :data:`OP_KINDS`; ``name`` is the source module's qualified name (layer
    scope for reports); ``attrs`` hold JSON-able public parameters; ``arrays`` hold integer
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
        return tuple(k for k in ("weight", "bias") if k in self.arrays)


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


@dataclass
class Program:
    """An integer program: ops in topological order plus public tensor facts.

    ``meta`` holds public descriptive data (model name, bit assignment, scales...).
    """

    model: str
    ops: list[Op]
    tensors: dict[str, TensorInfo]
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ structure
    @property
    def input_op(self) -> Op:
        return next(op for op in self.ops if op.kind == "input")

    @property
    def output_op(self) -> Op:
        return next(op for op in self.ops if op.kind == "output")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.tensors[self.input_op.output].shape

    def consumers(self) -> dict[str, list[Op]]:
        out: dict[str, list[Op]] = {t: [] for t in self.tensors}
        for op in self.ops:
            for t in op.inputs:
                out[t].append(op)
        return out

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    # ------------------------------------------------------------------ hashing
    def public_dict(self) -> dict:
        """Everything public: op kinds, names, wiring, attrs (incl. weight shapes), tensor shapes,
        bounds and scales, public arrays (multipliers, offsets). Weights and biases are left out.
        """
        ops = [
            op_to_dict(
                op,
                {
                    k: {"values": a.astype(np.int64).ravel().tolist(), "shape": list(a.shape)}
                    for k, a in sorted(op.arrays.items())
                    if k not in op.secret_arrays
                },
            )
            for op in self.ops
        ]
        return {"model": self.model, "ops": ops, "tensors": tensors_to_dict(self.tensors)}

    @classmethod
    def from_public_dict(cls, d: dict) -> Program:
        """The weight-free program a client or dealer works from (no secret arrays)."""
        try:
            ops = [
                op_from_dict(
                    o,
                    {
                        k: np.asarray(v["values"], dtype=np.int64).reshape(v["shape"])
                        for k, v in o["arrays"].items()
                    },
                )
                for o in d["ops"]
            ]
            prog = cls(str(d["model"]), ops, tensors_from_dict(d["tensors"]), {})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PrivQuantError(f"malformed public program: {e!r}") from None
        prog.validate()
        return prog

    @property
    def has_weights(self) -> bool:
        return all("weight" in op.arrays for op in self.ops if op.kind in ("conv2d", "linear"))

    def architecture_hash(self) -> str:
        """SHA-256 of :meth:`public_dict`, compared by server and client before secrets move."""
        blob = json.dumps(self.public_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Structural checks (used after loading an artifact). Raises PrivQuantError."""
        seen = set()
        kinds = [op.kind for op in self.ops]
        if kinds.count("input") != 1 or kinds.count("output") != 1:
            raise PrivQuantError("program must have exactly one input and one output op")
        for op in self.ops:
            if op.kind not in OP_KINDS:
                raise PrivQuantError(f"unknown op kind {op.kind!r} in program")
            if not isinstance(op.attrs, dict) or not isinstance(op.arrays, dict):
                raise PrivQuantError(f"op {op.name!r}: attributes are not a mapping")
            n_in, attrs, arrays = _REQUIRED[op.kind]
            if (n_in is None and not op.inputs) or (n_in is not None and len(op.inputs) != n_in):
                raise PrivQuantError(f"op {op.name!r} ({op.kind}) has {len(op.inputs)} inputs")
            if op.kind == "requant":
                arrays = (*arrays, *(f"mult{i}" for i in range(len(op.inputs))))
            missing = [a for a in attrs if a not in op.attrs] + [
                a for a in arrays if a not in op.arrays
            ]
            if missing:
                raise PrivQuantError(f"op {op.name!r} ({op.kind}) lacks {', '.join(missing)}")
            for t in op.inputs:
                if t not in seen:
                    raise PrivQuantError(f"op {op.name!r} reads {t!r} before it is computed")
            if op.output not in self.tensors:
                raise PrivQuantError(f"op {op.name!r} writes unknown tensor {op.output!r}")
            seen.add(op.output)
        for op in self.ops:
            w = op.arrays.get("weight")
            if w is not None and list(w.shape) != list(op.attrs.get("weight_shape", [])):
                raise PrivQuantError(f"op {op.name!r}: weight shape differs from its declaration")
            for k, a in op.arrays.items():
                if a.dtype.kind not in "iu":
                    raise PrivQuantError(f"op {op.name!r}: array {k!r} is not integer")


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
def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_out_hw(h: int, w: int, kernel, stride, padding) -> tuple[int, int]:
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def fan_in(op: Op) -> int:
    """K: number of products summed per linear output (weights per output channel)."""
    if op.kind in ("conv2d", "linear"):
        return int(np.prod(op.attrs["weight_shape"][1:]))
    raise ValueError(op.kind)


# ---------------------------------------------------------------------- bounds and rings
def weight_max(bits: int) -> int:
    """Largest |w| of a symmetric signed ``bits``-bit weight: ``2**(bits-1) - 1``."""
    return (1 << (bits - 1)) - 1


def linear_bound(op: Op, x: TensorInfo) -> int:
    """Public bound on |W x| for a conv/linear op: ``K * wmax * max|x|`` (also the bias clip)."""
    return fan_in(op) * weight_max(int(op.attrs["w_bits"])) * max(abs(x.lo), abs(x.hi))


def requant_presum_bounds(op: Op, ins: list[TensorInfo]) -> tuple[int, int]:
    """Bounds of ``t = sum_i m_i * x_i + offset`` inside a requant op (public)."""
    lo = hi = 0
    for i, x in enumerate(ins):
        m = op.arrays[f"mult{i}"].astype(np.int64)
        cands = np.stack([m * x.lo, m * x.hi])
        lo += int(cands.min())
        hi += int(cands.max())
    off = op.arrays["offset"].astype(np.int64)
    return lo + int(off.min()), hi + int(off.max())


def ring_bits(program: Program) -> dict[str, int]:
    """Per-tensor ring width ell for two-party execution (shares live in Z_{2^ell}).

    A tensor must fit its own bounds; a linear consumer computes modulo its output's ring, so its
    inputs must be shared in at least that ring; a requant consumer forms its pre-sum locally, so
    its inputs need the pre-sum's width; a maxpool compares differences ``a - b``. Requant outputs
    are emitted directly into this ring (no separate extension step).
    """
    rings: dict[str, int] = {}
    consumers = program.consumers()
    for op in reversed(program.ops):
        t = op.output
        info = program.tensors[t]
        need = info.bits
        for c in consumers[t]:
            if c.kind in LINEAR_KINDS:
                need = max(need, rings[c.output])
            elif c.kind == "requant":
                ins = [program.tensors[i] for i in c.inputs]
                need = max(need, signed_bits(*requant_presum_bounds(c, ins)))
            elif c.kind == "maxpool":
                need = max(need, signed_bits(info.lo - info.hi, info.hi - info.lo))
        rings[t] = need
    return rings


# ---------------------------------------------------------------------- plaintext execution
def _chan(a: np.ndarray, ndim: int) -> torch.Tensor:
    """Per-channel vector (C,) -> broadcastable against (N, C, ...) with ``ndim`` sample dims."""
    t = torch.as_tensor(a.astype(np.int64))
    return t.reshape((1, -1) + (1,) * (ndim - 1))


def floor_shift(t: torch.Tensor, shift: int) -> torch.Tensor:
    """floor(t / 2**shift) for int64 tensors (arithmetic shift)."""
    return t >> shift if shift > 0 else t


def apply_op(op: Op, ins: list[torch.Tensor], program: Program) -> torch.Tensor:
    """Evaluate one op on int64 tensors (batch-first). Exact: bounds keep everything < 2**62."""
    a = op.attrs
    if op.kind == "conv2d":
        w = torch.as_tensor(op.arrays["weight"].astype(np.int64))
        b = torch.as_tensor(op.arrays["bias"].astype(np.int64))
        return F.conv2d(
            ins[0],
            w,
            b,
            stride=pair(a["stride"]),
            padding=pair(a["padding"]),
            groups=int(a.get("groups", 1)),
        )
    if op.kind == "linear":
        w = torch.as_tensor(op.arrays["weight"].astype(np.int64))
        b = torch.as_tensor(op.arrays["bias"].astype(np.int64))
        return ins[0] @ w.T + b
    if op.kind == "sumpool":
        return sumpool(ins[0], a["kernel"], a["stride"], a["padding"])
    if op.kind == "maxpool":
        lo = program.tensors[op.inputs[0]].lo
        kh, kw = pair(a["kernel"])
        ph, pw = pair(a["padding"])
        x = F.pad(ins[0], (pw, pw, ph, ph), value=lo)
        return (
            x.unfold(2, kh, pair(a["stride"])[0]).unfold(3, kw, pair(a["stride"])[1]).amax((-1, -2))
        )
    if op.kind == "flatten":
        return ins[0].reshape(ins[0].shape[0], -1)
    if op.kind == "requant":
        t = _chan(op.arrays["offset"], ins[0].dim() - 1)
        for i, x in enumerate(ins):
            t = t + x * _chan(op.arrays[f"mult{i}"], x.dim() - 1)
        return floor_shift(t, int(a["shift"])).clamp(int(a["lo"]), int(a["hi"]))
    if op.kind == "output":
        return ins[0]
    raise PrivQuantError(f"cannot execute op kind {op.kind!r}")


def sumpool(x: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """Window sums with zero padding (exact on int64)."""
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    x = F.pad(x, (pw, pw, ph, ph))
    return x.unfold(2, kh, sh).unfold(3, kw, sw).sum((-1, -2))


def check_input(program: Program, x) -> torch.Tensor:
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


def run_plain(program: Program, x, keep: bool = False):
    """Run the integer program in the clear.

    Returns the int64 output (N, classes), or ``(output, {tensor: value})`` with ``keep=True``.
    """
    env: dict[str, torch.Tensor] = {}
    for op in program.ops:
        if op.kind == "input":
            env[op.output] = check_input(program, x)
            continue
        env[op.output] = apply_op(op, [env[i] for i in op.inputs], program)
    out = env[program.output_op.output]
    return (out, env) if keep else out


def output_logits(program: Program, y: torch.Tensor) -> torch.Tensor:
    """Real-valued logits from the integer output."""
    scale = program.tensors[program.output_op.output].scale or 1.0
    return y.to(torch.float64) * scale
