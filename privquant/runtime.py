"""One executor for the integer program: the two-party roles (server, client, dealer).

Each role walks the same public program in the same order; a backend maps op kinds to
protocols (the op table, :mod:`privquant.ops`). Phases, each attributed per layer scope:

1. **setup** (once per model load): the provider's setup (dealer: seed distribution; ``ot``: a
   common seed and base OTs), then every protocol's ``setup`` (e.g. the linear layers' weight
   masks);
2. **offline** (per inference): every protocol's ``offline`` (correlated randomness by kind from
   the provider; the dealer runs only this phase);
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
from privquant._memory import release_freed_memory
from privquant.errors import PrivQuantError
from privquant.ops.argmax import output_program
from privquant.program import Program, check_input, ring_bits
from privquant.protocols.preprocessing.dealer import establish_seeds, make_provider
from privquant.protocols.preprocessing.ot_provider import DEFAULT_K, OtProvider
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
    preprocessing: str = "dealer",
    ot_k: int = DEFAULT_K,
    schedule: str = "auto",
) -> RoleResult:
    """Run ``party``'s role of one private inference of ``program`` on ``batch`` samples: a
    :class:`Session` with one inference (setup, then each layer's preprocessing and online step).

    The server's ``program`` carries the weights; the client's and the dealer's are the public
    program. ``x`` is the client's uint8 input batch (N, *input_shape) and is validated before
    anything is shared. ``seeds`` skips seed distribution (tests); ``simulated`` uses the
    in-process dealer (tests only: every result it touches is flagged insecure);
    ``preprocessing="ot"`` runs without a dealer (``ot_k``: SoftSpokenOT's parameter);
    ``schedule``: see :class:`Session`.
    """
    s = Session(
        party,
        program,
        backend=backend,
        seeds=seeds,
        simulated=simulated,
        dealer_book=dealer_book,
        progress=progress,
        preprocessing=preprocessing,
        ot_k=ot_k,
        schedule=schedule,
    )
    if party.rank == CLIENT:
        if x is None:
            raise PrivQuantError("the client must provide an input")
        x = check_input(program, x)
        if x.shape[0] != batch:
            raise PrivQuantError(f"input batch {x.shape[0]} differs from the agreed batch {batch}")
    s.setup()
    res = s.infer(batch, x)
    total = s.result()
    return RoleResult(party.rank, res.logits, total.seconds, total.stats, total.scopes, simulated)


# ------------------------------------------------------------------------------------ sessions
# Output policies this runtime can execute (``topk`` is written ``topk:K``): the argmax op is
# appended per policy by ``privquant.ops.argmax.output_program``.
OUTPUT_POLICIES = ("label", "topk", "logits")
PREPROCESSING_MODES = ("dealer", "ot")
SCHEDULES = ("auto", "offline-first", "interleaved")
#: ``auto`` schedule: the preprocessing of consecutive layers is made together, before their
#: online steps, up to this much declared preprocessing traffic per window (32 MiB: one window
#: for resnet8 or resnet18-cifar at batch 1, six for resnet18-cifar at batch 16)
OFFLINE_WINDOW_BITS = 32 * 8 * 2**20


def windows(schedule: str, offline_bits: list[int]) -> list[range]:
    """The op windows of one inference under ``schedule``, given each op's declared preprocessing
    traffic: each window's preprocessing is made before its first online step. ``offline-first``
    is one window, ``interleaved`` one per op, ``auto`` the longest runs of consecutive ops whose
    traffic sums to at most :data:`OFFLINE_WINDOW_BITS` (an op over it alone). Public data
    only, so every role cuts the same windows."""
    if schedule not in SCHEDULES:
        raise PrivQuantError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    n = len(offline_bits)
    if schedule == "offline-first":
        return [range(0, n)] if n else []
    budget = OFFLINE_WINDOW_BITS if schedule == "auto" else 0
    out, start, acc = [], 0, 0
    for i, b in enumerate(offline_bits):
        if i > start and acc + b > budget:
            out.append(range(start, i))
            start, acc = i, 0
        acc += b
    if n:
        out.append(range(start, n))
    return out


def _last_use(program: Program) -> dict[str, int]:
    """Index of the last op reading each tensor (the output tensor is kept)."""
    last: dict[str, int] = {}
    for i, op in enumerate(program.ops):
        for t in op.inputs:
            last[t] = i
    last.pop(program.output_op.output, None)
    return last


class Session:
    """One role of a session: setup once, then any number of inferences (thin wrapper).

    ``Session(party, program, ...)``; :meth:`setup` distributes the seeds and runs every
    protocol's setup (the masked weights) once; :meth:`infer` runs one inference of ``batch``
    samples (the client passes ``x``). ``schedule`` orders each inference's preprocessing and
    online steps (:func:`windows`): ``offline-first`` makes every layer's preprocessing before
    the first online step (the textbook online phase: between two online steps no party waits on
    its peer's or the dealer's preprocessing), ``interleaved`` each layer's just before its
    online step (memory follows the widest layer, not the network), ``auto`` (default) that of
    windows of consecutive layers with up to :data:`OFFLINE_WINDOW_BITS` of declared traffic
    (offline-first for small inferences, a few pauses and bounded memory for large ones). The
    dealer walks the same sequence and only sends; every activation is freed after its last
    reader. The windows depend on public data only, so all roles cut the same ones (``ot`` mode
    needs that: its preprocessing is interactive). Traffic and rounds are exactly those of
    :func:`run_role` for the same batch under every schedule (phases have separate clocks); the
    per-layer scopes accumulate over inferences.

    ``output`` is the output policy (``label``, ``topk:K`` or ``logits``): every role runs
    :func:`~privquant.ops.argmax.output_program` of its program, so ``self.program`` includes
    the policy's argmax op.
    """

    def __init__(
        self,
        party: Party,
        program: Program,
        *,
        backend: str = "privquant",
        seeds=None,
        simulated: bool = False,
        dealer_book=None,
        progress: bool = False,
        preprocessing: str = "dealer",
        output: str = "logits",
        ot_k: int = DEFAULT_K,
        schedule: str = "auto",
    ):
        windows(schedule, [])  # checks the name
        if preprocessing not in PREPROCESSING_MODES:
            raise PrivQuantError(
                f"preprocessing {preprocessing!r} is not available in this build "
                f"(available: {', '.join(PREPROCESSING_MODES)})"
            )
        program = output_program(program, output)  # checks the policy against the program
        if party.rank == SERVER and not program.has_weights:
            raise PrivQuantError("the server needs the full program (with weights)")
        if preprocessing == "ot" and (party.rank == DEALER or simulated):
            raise PrivQuantError("'ot' preprocessing runs between the server and the client only")
        self.preprocessing, self.ot_k = preprocessing, ot_k
        self.party, self.program, self.backend = party, program, backend
        self.seeds, self.simulated, self.dealer_book = seeds, simulated, dealer_book
        self.progress, self.output, self.schedule = progress, output, schedule
        self._offline_bits: dict[int, list[int]] = {}
        self.rings = ring_bits(program)
        k = ot_k if preprocessing == "ot" else None
        self.protos = [ops.protocol(op.kind, backend, preprocessing, k) for op in program.ops]
        self._last = _last_use(program)
        self.corr = None
        self.states: list | None = None
        self.seconds: dict[str, float] = {}
        self.inferences = 0

    def setup(self) -> None:
        party, program = self.party, self.program
        t0 = time.perf_counter()
        if self.preprocessing == "ot":
            with party.scope(SEEDS_SCOPE):
                self.corr = OtProvider(party, self.ot_k, master=self.seeds)
                self.corr.setup()
        else:
            seeds = self.seeds
            if seeds is None:
                with party.scope(SEEDS_SCOPE):
                    seeds = establish_seeds(party)
            self.corr = make_provider(
                party, seeds, simulated=self.simulated, dealer_book=self.dealer_book
            )
        params = secret_params(program) if party.rank == SERVER else {}
        sigs = [ops.signature(op, program, self.rings, 1) for op in program.ops]
        self.states = []
        for op, proto, sig in zip(program.ops, self.protos, sigs):
            with party.scope(op.name):
                self.states.append(proto.setup(self.corr, sig, params.get(op.name)))
        self.seconds["setup"] = time.perf_counter() - t0

    def infer(self, batch: int, x: torch.Tensor | None = None) -> RoleResult:
        """One inference of ``batch`` samples; the client's result (``.logits``) holds what the
        output policy opens: the logits, or the ``k`` indices per sample (``label``/``topk:K``)."""
        if self.states is None:
            raise PrivQuantError("Session.setup() must run before infer()")
        party, program, rank = self.party, self.program, self.party.rank
        if rank == CLIENT:
            if x is None:
                raise PrivQuantError("the client must provide an input")
            x = check_input(program, x)
            if x.shape[0] != batch:
                raise PrivQuantError(f"input batch {x.shape[0]} differs from the agreed {batch}")
        before = party.stats.as_dict()
        t0 = time.perf_counter()
        env: dict[str, torch.Tensor] = {}
        t_off = t_on = 0.0
        bar = tqdm(
            total=len(program.ops),
            desc="private inference",
            unit="op",
            disable=not self.progress,
            leave=False,
        )
        sigs = [ops.signature(op, program, self.rings, batch) for op in program.ops]
        if batch not in self._offline_bits:  # declared, per op: what the windows are cut from
            self._offline_bits[batch] = [
                p.cost(g, self.preprocessing).offline_bits for p, g in zip(self.protos, sigs)
            ]
        offline = self._offline_bits[batch]
        pres: list = [None] * len(sigs)
        items = list(zip(program.ops, self.protos, self.states))
        for win in windows(self.schedule, offline):
            for i in win:  # the window's preprocessing, in op order (as every role walks it)
                op, proto, st = items[i]
                with party.scope(op.name):
                    t1 = time.perf_counter()
                    pres[i] = proto.offline(self.corr, sigs[i], st)
                    t_off += time.perf_counter() - t1
            for i in win:
                op, proto, _ = items[i]
                bar.set_postfix_str(op.name)
                with party.scope(op.name):
                    pre, pres[i] = pres[i], None
                    t2 = time.perf_counter()
                    if rank != DEALER:
                        if op.kind == "input":
                            ins = [x if rank == CLIENT else None]
                        else:
                            ins = [env[t] for t in op.inputs]
                        env[op.output] = proto.online(party, sigs[i], pre, *ins)
                        t_on += time.perf_counter() - t2
                    del pre
                for t in op.inputs:
                    if self._last.get(t) == i:
                        env.pop(t, None)
                release_freed_memory()  # the layer's temporaries back to the OS (privquant._memory)
                bar.update(1)
        bar.close()
        logits = env.get(program.output_op.output) if rank == CLIENT else None
        self.inferences += 1
        dt = time.perf_counter() - t0
        for k, v in (("inference", dt), ("offline", t_off), ("online", t_on)):
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        after = party.stats.as_dict()
        delta = {
            k: {p: after[k][p] - before[k][p] for p in after[k]}
            for k in ("bits_sent", "bits_recv", "msgs_sent", "msgs_recv", "wire_sent", "wire_recv")
        }
        return RoleResult(
            rank,
            logits,
            {"inference": dt, "offline": t_off, "online": t_on},
            delta,
            {},
            self.simulated,
        )

    def result(self) -> RoleResult:
        """The role's accounting for the whole session so far (totals and per-layer scopes)."""
        return RoleResult(
            self.party.rank,
            None,
            dict(self.seconds),
            self.party.stats.as_dict(),
            {k: v.as_dict() for k, v in self.party.scopes.items()},
            self.simulated,
        )
