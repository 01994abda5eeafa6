"""``argmax``: the indices of the ``k`` largest logits per sample (the output policies).

The op is not written by quantization: the runtime appends it per **output policy**, chosen by
the server and agreed in the session offer (:func:`output_program`):

==============  =====================================================================
``logits``      the program as lowered: the logits are opened to the client
``label``       ``logits -> argmax(k=1) -> output``: the client learns only the index
``topk:K``      ``logits -> argmax(k=K) -> output``: the ``K`` indices, largest first
==============  =====================================================================

Plaintext semantics: ``torch.sort(x, descending=True, stable=True).indices[:, :k]`` (equal
logits: lower index first; ``k = 1`` is ``torch.argmax``). Output tensor: ``(k,)`` per sample,
bounds ``[0, C - 1]``. Ring atoms: the logits' ring must hold differences (``diff``, as for max
pooling). Two-party protocol: :class:`privquant.protocols.argmax.Argmax` (dealer
preprocessing) or :class:`privquant.protocols.ot.argmax.OtArgmax` (``ot``, no dealer); the
output op then opens the indices to the client (``n*k*Lo`` bits, 1 round).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch

from privquant.errors import PrivQuantError
from privquant.ops.base import OpKind
from privquant.protocols.argmax import ARGMAX, MAX_CLASSES, ArgmaxSig
from privquant.protocols.ot.argmax import OT_ARGMAX

POLICIES = ("label", "topk", "logits")
ARGMAX_SCOPE = "(argmax)"
LABELS = "labels"


def policy_k(output: str) -> int | None:
    """``k`` of an output policy (``label`` = 1, ``topk:K`` = K), None for ``logits``."""
    if output == "logits":
        return None
    if output == "label":
        return 1
    if isinstance(output, str) and output.startswith("topk:"):
        tail = output[5:]
        if tail.isascii() and tail.isdigit() and len(tail) <= 5 and int(tail) >= 1:
            return int(tail)
    raise PrivQuantError(f"output policy must be label, topk:K (K >= 1) or logits, not {output!r}")


def output_program(program, output: str):
    """The program the parties execute under output policy ``output`` (the public program with
    the argmax op inserted before the output op; ``logits``: ``program`` itself)."""
    k = policy_k(output)
    if k is None:
        return program
    from privquant.ir import Op, TensorInfo

    out_op = program.output_op
    src = out_op.inputs[0]
    shape = program.tensors[src].shape
    if len(shape) != 1:
        raise PrivQuantError(f"output policy {output!r} needs a logit vector, not shape {shape}")
    classes = int(shape[0])
    if not 1 <= k <= classes:
        raise PrivQuantError(
            f"output policy {output!r}: the model has {classes} classes (need 1 <= K <= {classes})"
        )
    if ARGMAX_SCOPE in {op.name for op in program.ops} or LABELS in program.tensors:
        raise PrivQuantError(f"the program already has an output policy ({ARGMAX_SCOPE})")
    prog = copy.copy(program)
    tensors = dict(program.tensors)
    tensors[LABELS] = TensorInfo(LABELS, (k,), 0, classes - 1, None)
    am = Op("argmax", ARGMAX_SCOPE, [src], LABELS, {"k": k})
    new_out = Op(out_op.kind, out_op.name, [LABELS], out_op.output, dict(out_op.attrs))
    tensors[out_op.output] = TensorInfo(out_op.output, (k,), 0, classes - 1, None)
    ops = []
    for op in program.ops:
        ops += [am, new_out] if op is out_op else [op]
    prog.ops, prog.tensors = ops, tensors
    prog.meta = {**program.meta, "output_policy": output}
    prog.validate()
    return prog


def plain_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The reference: indices of the ``k`` largest values per row, ties by lower index."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]


class ArgmaxKind(OpKind):
    name = "argmax"
    attrs = ("k",)
    protocols: ClassVar[dict] = {"privquant": ARGMAX}
    ot_protocols: ClassVar[dict] = {"privquant": OT_ARGMAX}

    def check(self, op, program):
        shape = program.tensors[op.inputs[0]].shape
        k = op.attrs["k"]
        if len(shape) != 1 or not 1 <= shape[0] <= MAX_CLASSES:
            raise PrivQuantError(
                f"op {op.name!r} (argmax) needs a vector of at most "
                f"{MAX_CLASSES} logits, not shape {shape}"
            )
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= shape[0]:
            raise PrivQuantError(f"op {op.name!r} (argmax): k={k!r} not in 1..{shape[0]}")

    def apply(self, op, ins, program):
        return plain_topk(ins[0], int(op.attrs["k"]))

    def ring_atoms(self, op, program, t):
        return [("diff", t)]

    def ring_tensors(self, op):
        return [op.inputs[0], op.output]

    def signature(self, op, program, rings, batch):
        xi = program.tensors[op.inputs[0]]
        return ArgmaxSig(
            batch,
            int(xi.shape[0]),
            int(op.attrs["k"]),
            xi.lo,
            xi.hi,
            rings[op.inputs[0]],
            rings[op.output],
        )


KIND = ArgmaxKind()
