"""Declared communication of a whole program, and the constants every report shares.

``declared(program, batch, backend)`` sums every op's closed-form ``cost()`` (dispatched through
:mod:`privquant.ops`) plus the seed setup, grouped by layer scope (``op.name``) exactly as the
runtime attributes measured traffic; :class:`privquant.report.CommReport`, the search's cost
table, ``privquant bench`` and the tests all use it, so there is one cost model.
"""

from __future__ import annotations

from privquant import ops
from privquant.program import Program, ring_bits
from privquant.protocols.ot import HE_KEYS_SCOPE, OtLinear, he_keys_cost
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
    clocks: dict[str, list[int]] = {}
    k = ot_k if preprocessing == "ot" else None
    for op in program.ops:
        proto = ops.protocol(op.kind, backend, preprocessing, k)
        c = None
        for b in batches or [batch]:
            sig = ops.signature(op, program, rings, b)
            cb = proto.cost(sig, preprocessing)
            # setup runs once per session: later chunks add online, offline and rounds
            c = cb if c is None else c.then(Cost(cb.online_bits, cb.offline_bits, 0, cb.rounds))
            e0, e1 = proto.end_clocks(sig)
            acc = clocks.setdefault(op.name, [0, 0])
            acc[0] += e0
            acc[1] += e1
        scopes[op.name] = scopes[op.name].then(c) if op.name in scopes else c
        label = op.kind
        if isinstance(proto, OtLinear):  # which dealer-free construction this layer uses
            label = f"{op.kind}[{proto.method(ops.signature(op, program, rings, 1))}]"
        kinds.setdefault(op.name, []).append(label)
    # a scope's rounds as the channel measures them: each party's clock summed over the ops
    # (and chunks) entering it, then the max over the parties (protocols.transport.channel)
    for name, (e0, e1) in clocks.items():
        c = scopes[name]
        scopes[name] = Cost(c.online_bits, c.offline_bits, c.setup_bits, max(e0, e1))
    if preprocessing == "ot":
        he = he_keys_scope(program, rings, backend, k)
        if he is not None:
            scopes[HE_KEYS_SCOPE] = he
            kinds[HE_KEYS_SCOPE] = ["he keys"]
    return Cost.sequence(scopes.values()), scopes, kinds


def he_keys_scope(program: Program, rings, backend: str, ot_k: int | None) -> Cost | None:
    """The session's HE public keys (``ot`` mode, layers whose correlation is made by HE)."""
    sigs = [
        ops.signature(op, program, rings, 1)
        for op in program.ops
        if isinstance(ops.protocol(op.kind, backend, "ot", ot_k), OtLinear)
    ]
    c = he_keys_cost(sigs).to_cost() if sigs else None
    return c if c is not None and c.setup_bits else None


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
