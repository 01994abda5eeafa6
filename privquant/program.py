"""The integer program: the lowered, integer-only form of a quantized network.

This is the contract between quantization (which produces it), the artifact (which stores it) and
every executor (plaintext here; two-party in ``privquant.runtime``). All values are integers; the
real value of an activation is ``q * scale``.

Ops (per-sample shapes, the batch dimension is implicit and leading) are the kinds registered in
:mod:`privquant.ops`, one module each with its semantics, rings, signature and protocols:
``input`` (the client's uint8 image), ``conv2d``, ``linear``, ``sumpool``, ``maxpool``,
``flatten``, ``neg``, ``requant`` (the fused rescale/ReLU/clip/residual step) and ``output``
(the logits). Everything here dispatches through that table.

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

from privquant import ops
from privquant.errors import PrivQuantError
from privquant.ir import (  # noqa: F401  (the data model, re-exported)
    SECRET_ARRAYS,
    Op,
    TensorInfo,
    check_input,
    fan_in,
    linear_bound,
    op_from_dict,
    op_to_dict,
    tensors_from_dict,
    tensors_to_dict,
    weight_max,
)
from privquant.protocols.primitives.geometry import conv_out_hw as conv_out_hw
from privquant.protocols.primitives.geometry import pair as pair
from privquant.protocols.primitives.ring import signed_bits as signed_bits


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

    def producer(self, tensor: str) -> Op:
        """The op writing ``tensor``."""
        return next(op for op in self.ops if op.output == tensor)

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
        return all(k in op.arrays for op in self.ops for k in ops.get(op.kind).secret)

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
            kind = ops.get(op.kind)
            if not isinstance(op.attrs, dict) or not isinstance(op.arrays, dict):
                raise PrivQuantError(f"op {op.name!r}: attributes are not a mapping")
            for t in op.inputs:
                if t not in seen:
                    raise PrivQuantError(f"op {op.name!r} reads {t!r} before it is computed")
            if op.output not in self.tensors:
                raise PrivQuantError(f"op {op.name!r} writes unknown tensor {op.output!r}")
            for k, a in op.arrays.items():
                if a.dtype.kind not in "iu":
                    raise PrivQuantError(f"op {op.name!r}: array {k!r} is not integer")
            kind.validate(op, self)
            seen.add(op.output)


def requant_presum_bounds(op: Op, ins: list[TensorInfo]) -> tuple[int, int]:
    """Bounds of ``t = sum_i m_i * x_i + offset`` inside a requant op (public)."""
    from privquant.ops.requant import presum_bounds

    return presum_bounds(op, ins)


def atom_bits(atom: tuple[str, str], program: Program, rings: dict[str, int]) -> int:
    """Value of one ring atom (:mod:`privquant.ops.base`) given the rings computed so far."""
    what, t = atom
    if what == "ring":
        return rings[t]
    info = program.tensors[t]
    if what == "bits":
        return info.bits
    if what == "diff":
        return signed_bits(info.lo - info.hi, info.hi - info.lo)
    if what == "own":
        op = program.producer(t)
        return ops.get(op.kind).own_ring(op, program)
    raise ValueError(f"unknown ring atom {atom!r}")


def ring_atoms(program: Program, t: str, consumers: dict | None = None) -> list[tuple[str, str]]:
    """The atoms whose max is tensor ``t``'s ring: its own width, then each consumer's needs."""
    consumers = program.consumers() if consumers is None else consumers
    out = [("bits", t)]
    for c in consumers[t]:
        out += ops.get(c.kind).ring_atoms(c, program, t)
    return list(dict.fromkeys(out))


def ring_bits(program: Program) -> dict[str, int]:
    """Per-tensor ring width ell for two-party execution (shares live in Z_{2^ell}).

    A tensor must fit its own bounds and whatever each consumer's op kind needs of it (its ring
    atoms: a linear consumer computes modulo its output's ring, a requant forms its pre-sum
    locally, a maxpool compares differences). Requant outputs are emitted directly into this ring
    (no separate extension step).
    """
    rings: dict[str, int] = {}
    consumers = program.consumers()
    for op in reversed(program.ops):
        t = op.output
        rings[t] = max(atom_bits(a, program, rings) for a in ring_atoms(program, t, consumers))
    return rings


# ---------------------------------------------------------------------- plaintext execution
def apply_op(op: Op, ins: list[torch.Tensor], program: Program) -> torch.Tensor:
    """Evaluate one op on int64 tensors (batch-first). Exact: bounds keep everything < 2**62."""
    return ops.get(op.kind).apply(op, ins, program)


def floor_shift(t: torch.Tensor, shift: int) -> torch.Tensor:
    """floor(t / 2**shift) for int64 tensors (arithmetic shift)."""
    return t >> shift if shift > 0 else t


def run_plain(program: Program, x, keep: bool = False):
    """Run the integer program in the clear.

    Returns the int64 output (N, classes), or ``(output, {tensor: value})`` with ``keep=True``.
    """
    env: dict[str, torch.Tensor] = {}
    for op in program.ops:  # the input op (no inputs) receives the client's batch
        ins = [env[i] for i in op.inputs] if op.inputs else [x]
        env[op.output] = apply_op(op, ins, program)
    out = env[program.output_op.output]
    return (out, env) if keep else out


def output_logits(program: Program, y: torch.Tensor) -> torch.Tensor:
    """Real-valued logits from the integer output."""
    scale = program.tensors[program.output_op.output].scale or 1.0
    return y.to(torch.float64) * scale
