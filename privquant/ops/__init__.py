"""The op table: one module per integer-program op kind, registered in :data:`MODULES`.

Adding an op kind = one new module defining ``KIND`` (an :class:`~privquant.ops.base.OpKind`)
plus its tests, and one entry in :data:`MODULES`. Program validation, the plaintext executor,
ring widths, the two-party walker, the cost report, the search's cost table and the baselines
all dispatch through :func:`get`.
"""

from __future__ import annotations

from privquant.errors import PrivQuantError
from privquant.ops import (
    argmax,
    conv2d,
    flatten,
    input_,
    linear,
    maxpool,
    neg,
    output,
    requant,
    sumpool,
)
from privquant.ops.base import OpKind
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.base import Protocol
from privquant.protocols.primitives.cost import Cost

MODULES = (input_, conv2d, linear, sumpool, maxpool, flatten, neg, requant, argmax, output)
KINDS: dict[str, OpKind] = {m.KIND.name: m.KIND for m in MODULES}
#: float-graph node kinds (``privquant.quant``), each defined in the op module it lowers to
GRAPH_KINDS: dict[str, GraphKind] = {
    m.KIND.graph.name: m.KIND.graph for m in MODULES if m.KIND.graph
}
BACKENDS = ("privquant", "privquant-unfused")


def get(kind: str) -> OpKind:
    """The :class:`OpKind` of ``kind`` (``PrivQuantError`` if unknown)."""
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise PrivQuantError(f"unknown op kind {kind!r} in program") from None


def graph_kind(kind: str) -> GraphKind:
    """The :class:`GraphKind` of a float-graph node kind."""
    try:
        return GRAPH_KINDS[kind]
    except (KeyError, TypeError):
        raise PrivQuantError(f"unknown graph node kind {kind!r}") from None


def protocol(kind: str, backend: str = "privquant") -> Protocol:
    """The protocol executing op kind ``kind`` under ``backend``."""
    if backend not in BACKENDS:
        raise PrivQuantError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    return get(kind).protocol(backend)


def signature(op, program, rings: dict[str, int], batch: int):
    """The public signature of ``op`` for ``batch`` samples."""
    return get(op.kind).signature(op, program, rings, batch)


def op_cost(op, program, rings: dict[str, int], batch: int, backend: str = "privquant") -> Cost:
    """Closed-form cost of one op (no execution)."""
    return protocol(op.kind, backend).cost(signature(op, program, rings, batch))


__all__ = [
    "BACKENDS",
    "GRAPH_KINDS",
    "KINDS",
    "MODULES",
    "GraphKind",
    "OpKind",
    "QNode",
    "get",
    "graph_kind",
    "op_cost",
    "protocol",
    "signature",
]
