"""From integer-program ops to (protocol, signature): the table a runtime walker uses.

``signature(op, program, rings, batch)`` builds the public signature of ``op`` for a batch of
``batch`` samples, with ``rings = privquant.program.ring_bits(program)``;
``protocol_for(op.kind, backend)`` returns the protocol object. Backends:

* ``"privquant"`` -- fused requantization (the default),
* ``"privquant-unfused"`` -- the same with requant replaced by the unfused chain
  (truncation, ReLU/clip, extension as separate protocols), for the ``--unfused`` ablation.

Requant op signatures wrap the core :class:`~privquant.protocols.requant.RequantSig` with the
local pre-sum: the pre-sum ring is ``signed_bits(presum bounds)``, which ``ring_bits`` guarantees
is at most every input's ring, so each input share is simply reduced into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privquant.errors import PrivQuantError
from privquant.program import Op, Program, pair, requant_presum_bounds, signed_bits
from privquant.protocols import requant
from privquant.protocols.base import Protocol
from privquant.protocols.basic import (
    FLATTEN,
    INPUT,
    OUTPUT,
    SUMPOOL,
    FlattenSig,
    InputSig,
    OpenToSig,
    SumpoolSig,
    presum,
)
from privquant.protocols.linear import LINEAR, LinearSig
from privquant.protocols.maxpool import MAXPOOL, MaxpoolSig
from privquant.protocols.primitives.cost import Cost
from privquant.protocols.primitives.ring import reduce
from privquant.protocols.transport.channel import CLIENT


@dataclass(frozen=True)
class RequantOpSig:
    """A program requant op: pre-sum (public multipliers/offset) + the fused core."""

    shape: tuple[int, ...]  # (N, C, ...) of every input and of the output
    mults: tuple[tuple[int, ...], ...]
    offset: tuple[int, ...]
    core: requant.RequantSig


class RequantOp(Protocol):
    """Local pre-sum ``t = sum_i m_i x_i + offset`` then the fused requant (cost of the core)."""

    kind = "requant"
    fused = True

    def cost(self, sig: RequantOpSig) -> Cost:
        return requant.cost(sig.core) if self.fused else requant.unfused_cost(sig.core)

    def offline(self, corr, sig: RequantOpSig, state=None):
        if self.fused:
            return requant.offline(corr, sig.core)
        return requant.unfused_offline(corr, sig.core)

    def online(self, party, sig: RequantOpSig, pre, *xs):
        if len(xs) != len(sig.mults):
            raise PrivQuantError(f"requant expects {len(sig.mults)} inputs, got {len(xs)}")
        for x in xs:
            if tuple(x.shape) != tuple(sig.shape):
                raise PrivQuantError(
                    f"requant: share has shape {tuple(x.shape)}, expected {tuple(sig.shape)}"
                )
        L = sig.core.ell
        t = presum(party, [reduce(x, L) for x in xs], sig.mults, sig.offset, L)
        if self.fused:
            return requant.online(party, sig.core, pre, t)
        return requant.unfused_online(party, sig.core, pre, t)


class RequantUnfusedOp(RequantOp):
    """The ``--unfused`` ablation: truncation, ReLU/clip and extension as separate protocols."""

    fused = False


REQUANT = RequantOp()
REQUANT_UNFUSED = RequantUnfusedOp()

BACKENDS: dict[str, dict[str, Protocol]] = {
    "privquant": {
        "input": INPUT,
        "conv2d": LINEAR,
        "linear": LINEAR,
        "sumpool": SUMPOOL,
        "maxpool": MAXPOOL,
        "flatten": FLATTEN,
        "requant": REQUANT,
        "output": OUTPUT,
    },
}
BACKENDS["privquant-unfused"] = {**BACKENDS["privquant"], "requant": REQUANT_UNFUSED}


def protocol_for(kind: str, backend: str = "privquant") -> Protocol:
    try:
        table = BACKENDS[backend]
    except KeyError:
        raise PrivQuantError(
            f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}"
        ) from None
    try:
        return table[kind]
    except KeyError:
        raise PrivQuantError(f"no protocol for op kind {kind!r}") from None


def _tuple(a) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(a, dtype=np.int64).reshape(-1))


def signature(op: Op, program: Program, rings: dict[str, int], batch: int):
    """The public signature of ``op`` for ``batch`` samples (shapes include the batch)."""
    t = program.tensors
    out = (batch, *t[op.output].shape)
    a = op.attrs
    if op.kind == "input":
        return InputSig(out, rings[op.output])
    if op.kind in ("conv2d", "linear"):
        x = (batch, *t[op.inputs[0]].shape)
        # public weight shape: the client's and the dealer's programs carry no weight values
        w = tuple(int(v) for v in op.attrs.get("weight_shape", ()))
        if not w:
            w = tuple(op.arrays["weight"].shape)
        if op.kind == "linear":
            return LinearSig("linear", x, w, rings[op.output], key=op.name)
        return LinearSig(
            "conv2d",
            x,
            w,
            rings[op.output],
            pair(a.get("stride", 1)),
            pair(a.get("padding", 0)),
            int(a.get("groups", 1)),
            key=op.name,
        )
    if op.kind == "sumpool":
        x = (batch, *t[op.inputs[0]].shape)
        return SumpoolSig(
            x, pair(a["kernel"]), pair(a["stride"]), pair(a["padding"]), rings[op.output]
        )
    if op.kind == "flatten":
        return FlattenSig((batch, *t[op.inputs[0]].shape), rings[op.output])
    if op.kind == "maxpool":
        xi = t[op.inputs[0]]
        return MaxpoolSig(
            (batch, *xi.shape),
            pair(a["kernel"]),
            pair(a["stride"]),
            pair(a["padding"]),
            xi.lo,
            xi.hi,
            rings[op.inputs[0]],
            rings[op.output],
        )
    if op.kind == "requant":
        ins = [t[i] for i in op.inputs]
        tlo, thi = requant_presum_bounds(op, ins)
        n = int(np.prod(out))
        core = requant.RequantSig(
            n,
            signed_bits(tlo, thi),
            int(a["shift"]),
            int(a["lo"]),
            int(a["hi"]),
            tlo,
            thi,
            rings[op.output],
        )
        mults = tuple(_tuple(op.arrays[f"mult{i}"]) for i in range(len(op.inputs)))
        return RequantOpSig(out, mults, _tuple(op.arrays["offset"]), core)
    if op.kind == "output":
        return OpenToSig((batch, *t[op.inputs[0]].shape), rings[op.inputs[0]], CLIENT)
    raise PrivQuantError(f"no protocol for op kind {op.kind!r}")


def op_cost(
    op: Op, program: Program, rings: dict[str, int], batch: int, backend: str = "privquant"
) -> Cost:
    """Closed-form cost of one op (no execution)."""
    return protocol_for(op.kind, backend).cost(signature(op, program, rings, batch))
