"""One executor for the integer program: the two-party roles (server, client, dealer).

Each role walks the same public program in the same order; a backend maps op kinds to
protocols (the op table, :mod:`privquant.ops`). Phases, each attributed per layer scope:

1. **setup** (once per model load): seed distribution, then every protocol's ``setup`` (the
   linear layers' masked weights ``F = W - B`` sent from server to client);
2. **offline** (per inference): every protocol's ``offline`` (correlated randomness from the
   dealer; the dealer runs only this phase);
3. **online**: the client shares its input (no traffic), the protocols run layer by layer, and the
   logits are opened to the client alone.

The plaintext backend (``run_plain`` in ``privquant.program``) walks the same ops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from privquant import ops
from privquant.errors import PrivQuantError
from privquant.program import Program, check_input, ring_bits
from privquant.protocols.preprocessing.dealer import establish_seeds, make_correlations
from privquant.protocols.transport.channel import CLIENT, DEALER, SERVER, Party
from privquant.report import SEEDS_SCOPE


@dataclass
class RoleResult:
    """What one role ends with: the client's logits (int64) or None, timings, its accounting."""

    rank: int
    logits: torch.Tensor | None
    seconds: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    scopes: dict[str, dict] = field(default_factory=dict)
    insecure_simulated: bool = False


def secret_params(program: Program) -> dict[str, dict]:
    """The server's secret arrays per op name (weights and biases)."""
    return {
        op.name: {k: op.arrays[k] for k in op.secret_arrays}
        for op in program.ops
        if op.secret_arrays
    }


def run_role(
    party: Party,
    program: Program,
    *,
    batch: int,
    x: torch.Tensor | None = None,
    backend: str = "privquant",
    seeds=None,
    simulated: bool = False,
    dealer_book=None,
    progress: bool = False,
) -> RoleResult:
    """Run ``party``'s role of a private inference of ``program`` on ``batch`` samples.

    The server's ``program`` carries the weights; the client's and the dealer's are the public
    program. ``x`` is the client's uint8 input batch (N, *input_shape) and is validated before
    anything is shared. ``seeds`` skips seed distribution (tests); ``simulated`` uses the
    in-process dealer (tests only: every result it touches is flagged insecure).
    """
    rank = party.rank
    if rank == SERVER and not program.has_weights:
        raise PrivQuantError("the server needs the full program (with weights)")
    if rank == CLIENT:
        if x is None:
            raise PrivQuantError("the client must provide an input")
        x = check_input(program, x)
        if x.shape[0] != batch:
            raise PrivQuantError(f"input batch {x.shape[0]} differs from the agreed batch {batch}")
    rings = ring_bits(program)
    sigs = [ops.signature(op, program, rings, batch) for op in program.ops]
    protos = [ops.protocol(op.kind, backend) for op in program.ops]
    params = secret_params(program) if rank == SERVER else {}
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    if seeds is None:
        with party.scope(SEEDS_SCOPE):
            seeds = establish_seeds(party)
    corr = make_correlations(party, seeds, simulated=simulated, dealer_book=dealer_book)
    states = []
    for op, proto, sig in zip(program.ops, protos, sigs):
        with party.scope(op.name):
            states.append(proto.setup(corr, sig, params.get(op.name)))
    seconds["setup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pres = []
    for op, proto, sig, st in zip(program.ops, protos, sigs, states):
        with party.scope(op.name):
            pres.append(proto.offline(corr, sig, st))
    seconds["offline"] = time.perf_counter() - t0

    logits = None
    if rank != DEALER:
        t0 = time.perf_counter()
        env: dict[str, torch.Tensor] = {}
        bar = tqdm(
            total=len(program.ops),
            desc="private inference",
            unit="op",
            disable=not progress,
            leave=False,
        )
        for op, proto, sig, pre in zip(program.ops, protos, sigs, pres):
            bar.set_postfix_str(op.name)
            with party.scope(op.name):
                if op.kind == "input":
                    env[op.output] = proto.online(party, sig, pre, x if rank == CLIENT else None)
                else:
                    env[op.output] = proto.online(party, sig, pre, *[env[i] for i in op.inputs])
            bar.update(1)
        bar.close()
        logits = env[program.output_op.output] if rank == CLIENT else None
        seconds["online"] = time.perf_counter() - t0
    return RoleResult(
        rank,
        logits,
        seconds,
        party.stats.as_dict(),
        {k: v.as_dict() for k, v in party.scopes.items()},
        simulated,
    )
