"""Declared communication of a whole program, and the constants every report shares.

``declared(program, batch, backend)`` sums every op's closed-form ``cost()`` (dispatched through
:mod:`privquant.ops`) plus the seed setup, grouped by layer scope (``op.name``) exactly as the
runtime attributes measured traffic; :class:`privquant.report.CommReport`, the search's cost
table, ``privquant bench`` and the tests all use it, so there is one cost model.
"""

from __future__ import annotations

from privquant import ops
from privquant.program import Program, ring_bits
from privquant.protocols.preprocessing.base import check_mode
from privquant.protocols.preprocessing.dealer import SEED_SETUP_COST
from privquant.protocols.preprocessing.ot_provider import DEFAULT_K
from privquant.protocols.preprocessing.ot_provider import setup_cost as ot_setup_cost
from privquant.protocols.primitives.cost import Cost

FIELDS = ("online_bits", "offline_bits", "setup_bits", "rounds")
MB = 8 * 1e6  # bits per (decimal) megabyte
SEEDS_SCOPE = "(seeds)"
HANDSHAKE_SCOPE = "(handshake)"


TRUST = {
    "dealer": "non-colluding dealer (third party, like CrypTen's TTP)",
    "simulated": "simulated dealer (INSECURE, tests only)",
    "ot": "two parties only (OT extension / HE; like SiRNN, Cheetah)",
}


def provider_setup_cost(preprocessing: str = "dealer", ot_k: int = DEFAULT_K) -> Cost:
    """Setup traffic of the preprocessing provider (the ``(seeds)`` scope)."""
    if check_mode(preprocessing) == "ot":
        return ot_setup_cost(ot_k)
    return SEED_SETUP_COST


def declared(
    program: Program,
    *,
    batch: int = 1,
    backend: str = "privquant",
    batches: list[int] | None = None,
    preprocessing: str = "dealer",
    ot_k: int = DEFAULT_K,
) -> tuple[Cost, dict[str, Cost], dict[str, list[str]]]:
    """``(total, {scope: Cost}, {scope: [op kinds]})`` of one private inference of ``program``.

    ``batches``: the sizes of the inferences of one session when a batch ran in several chunks
    after one setup (setup counted once, the chunks' online/offline traffic and rounds in
    sequence). ``rounds`` of the total is the sum over scopes, an upper bound of the session's
    Lamport depth (consecutive layers may overlap by one message; ``protocols.transport.channel``).
    """
    rings = ring_bits(program)
    scopes: dict[str, Cost] = {SEEDS_SCOPE: provider_setup_cost(preprocessing, ot_k)}
    kinds: dict[str, list[str]] = {SEEDS_SCOPE: ["seeds"]}
    for op in program.ops:
        c = None
        for b in batches or [batch]:
            cb = ops.op_cost(op, program, rings, b, backend, preprocessing)
            # setup runs once per session: later chunks add online, offline and rounds
            c = cb if c is None else c.then(Cost(cb.online_bits, cb.offline_bits, 0, cb.rounds))
        scopes[op.name] = scopes[op.name].then(c) if op.name in scopes else c
        kinds.setdefault(op.name, []).append(op.kind)
    return Cost.sequence(scopes.values()), scopes, kinds


def program_cost(
    program: Program,
    *,
    batch: int = 1,
    backend: str = "privquant",
    preprocessing: str = "dealer",
    ot_k: int = DEFAULT_K,
):
    """Declared cost of one private inference of ``program``: ``(total, {scope: Cost})``."""
    total, scopes, _ = declared(
        program, batch=batch, backend=backend, preprocessing=preprocessing, ot_k=ot_k
    )
    return total, scopes
