"""The op-kind interface: everything the system knows about one kind of integer-program op.

An op kind is one module under ``privquant/ops/`` holding one :class:`OpKind` subclass instance
``KIND``; :mod:`privquant.ops` registers the modules in one tuple. Every consumer dispatches
through the table, never on ``op.kind`` strings:

==========================  ==================================================================
validation                  :meth:`OpKind.validate` (arity, attributes, arrays, own checks)
plaintext semantics         :meth:`OpKind.apply` -- the ``plain`` backend, exact on int64
ring widths                 :meth:`OpKind.ring_atoms` -- what the op needs of an input's ring;
                            :meth:`OpKind.own_ring` -- a ring only the op can compute (pre-sum)
public signature            :meth:`OpKind.signature` (shapes, rings, public parameters)
protocols                   :meth:`OpKind.protocol` per backend (``privquant``, ``...-unfused``)
                            and preprocessing (``dealer``/``simulated``: :attr:`protocols`;
                            ``ot``: :attr:`ot_protocols`, dealer-free constructions)
baselines                   :meth:`OpKind.sirnn` (SiRNN-style cost model)
quantization (optional)     :attr:`OpKind.graph` -- capture, fake-quant and lowering of the
                            float-graph node kind that lowers to this op (``privquant.quant``)
==========================  ==================================================================

Ring atoms. A tensor's ring is the max over *atoms*: its own width (``("bits", t)``) and, for each
consumer, the atoms that consumer's kind returns: ``("ring", u)`` (the ring of another tensor --
a linear op computes modulo its output's ring, so its input needs at least that ring),
``("own", u)`` (the consumer producing ``u`` computes its need with :meth:`own_ring`, e.g. a
requant's pre-sum width) or ``("diff", t)`` (room for differences ``a - b`` of ``t``'s values).
The executors (:func:`privquant.program.ring_bits`) and the search's cost table evaluate the
same atoms, so they cannot disagree.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from privquant.errors import PrivQuantError
from privquant.protocols.base import Protocol

Atom = tuple[str, str]


class OpKind:
    """Base class of an integer-program op kind (see the module docstring)."""

    name: ClassVar[str] = ""
    arity: ClassVar[int | None] = 1  # inputs; None = one or more
    attrs: ClassVar[tuple[str, ...]] = ()  # required attributes
    arrays: ClassVar[tuple[str, ...]] = ()  # required public integer arrays
    secret: ClassVar[tuple[str, ...]] = ()  # the server's secret arrays (absent client-side)
    #: computed modulo its output's ring (its inputs are shared in at least that ring)
    ring_linear: ClassVar[bool] = False
    #: the float-graph facet (``privquant.quant.kinds.GraphKind``) lowering to this op, if any
    graph: ClassVar[Any] = None

    # ------------------------------------------------------------------ validation
    def required_arrays(self, op) -> tuple[str, ...]:
        return self.arrays

    def validate(self, op, program) -> None:
        """Structural checks of one op (raise :class:`PrivQuantError`)."""
        n = len(op.inputs)
        if (self.arity is None and n == 0) or (self.arity is not None and n != self.arity):
            raise PrivQuantError(f"op {op.name!r} ({op.kind}) has {n} inputs")
        missing = [a for a in self.attrs if a not in op.attrs]
        missing += [a for a in self.required_arrays(op) if a not in op.arrays]
        if missing:
            raise PrivQuantError(f"op {op.name!r} ({op.kind}) lacks {', '.join(missing)}")
        self.check(op, program)

    def check(self, op, program) -> None:
        """Kind-specific validation beyond the required fields (default: none)."""

    # ------------------------------------------------------------------ semantics
    def apply(self, op, ins: list[torch.Tensor], program) -> torch.Tensor:
        """The op on int64 tensors (batch first), exactly as the integer program defines it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ rings
    def ring_atoms(self, op, program, t: str) -> list[Atom]:
        """What this op, reading tensor ``t``, needs of ``t``'s ring (see module docstring)."""
        return [("ring", op.output)] if self.ring_linear else []

    def own_ring(self, op, program) -> int:
        """The ring width behind an ``("own", op.output)`` atom."""
        raise NotImplementedError(f"{self.name} has no own ring")

    def ring_tensors(self, op) -> list[str]:
        """Tensors whose ring widths enter :meth:`signature`."""
        return [op.output]

    # ------------------------------------------------------------------ two-party execution
    def signature(self, op, program, rings: dict[str, int], batch: int):
        """Public signature of ``op`` for ``batch`` samples (shapes include the batch)."""
        raise NotImplementedError

    #: backend -> protocol with dealer (or simulated) preprocessing
    protocols: ClassVar[dict[str, Protocol]] = {}
    #: backend -> dealer-free protocol (``ot`` preprocessing); a kind without one falls back to
    #: its dealer protocol when that needs no correlation a dealer-free provider cannot make
    #: (local ops, the input's common randomness, the output opening)
    ot_protocols: ClassVar[dict[str, Protocol]] = {}

    def protocol(self, backend: str, preprocessing: str = "dealer", ot_k: int | None = None):
        if preprocessing == "ot":
            table = self.ot_protocols
            if table:
                proto = table.get(backend, table.get("privquant"))
                if ot_k is not None:
                    from privquant.protocols.ot import for_k

                    proto = for_k(proto, ot_k)
                return proto
            proto = self.protocols.get(backend, self.protocols.get("privquant"))
            if getattr(proto, "dealer_free", False):
                return proto
            from privquant.protocols.preprocessing.base import Unavailable

            raise Unavailable(f"op kind {self.name!r} has no dealer-free ('ot') protocol yet")
        return self.protocols.get(backend, self.protocols.get("privquant"))

    # ------------------------------------------------------------------ baselines
    def sirnn(self, op, ctx):
        """SiRNN-style cost of the op (``privquant.baselines.sirnn.Bits``) given ``ctx`` (a
        :class:`privquant.baselines.sirnn.SirnnContext`); sets ``ctx.width[op.output]``."""
        raise PrivQuantError(f"SiRNN-style model has no cost for op kind {self.name!r}")


def batched(batch: int, shape) -> tuple[int, ...]:
    return (batch, *(int(s) for s in shape))
