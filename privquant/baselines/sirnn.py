"""SiRNN-style baseline: an integer program costed with EzPC SCI's protocols, op by op.

SiRNN (Rathee et al., S&P 2021) evaluates fixed-point networks with the OT-based building blocks
of the SCI library (mpc-msri/EzPC). :mod:`privquant.baselines.sci` gives their costs as formulas
(checked against byte counts measured from a build of SCI); this module walks an integer program
with every op as a *separate* protocol at one uniform fixed-point width ``W`` (no fusion, no mixed
precision), dispatching each op through its kind's ``sirnn`` hook (:mod:`privquant.ops`).

Trust model: SCI is **dealer-free** (two parties, OT extension). Reports state this next to every
SiRNN figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from privquant import ops
from privquant.baselines.result import BackendResult, LayerCost
from privquant.baselines.sci import (  # noqa: F401  (re-exported for callers of this module)
    ANCHORS_PATH,
    BASE_OT_SETUP_BYTES,
    DEFAULT_WIDTH,
    TRUST,
    ZERO,
    Bits,
    SirnnConfig,
    anchor_fit,
    msb,
    numel,
    relu,
    truncate_and_reduce,
    z_extend,
)
from privquant.program import Program


@dataclass
class SirnnContext:
    """What an op kind's ``sirnn`` hook sees: the program, batch, config, the activation of each
    requant (``acts``) and the fixed-point width of every tensor computed so far (``width``)."""

    program: Program
    batch: int
    cfg: SirnnConfig
    acts: dict | None = None
    width: dict[str, int] = field(default_factory=dict)

    def numel(self, tensor: str) -> int:
        return self.batch * numel(self.program.tensors[tensor].shape)

    def is_accumulator(self, tensor: str) -> bool:
        """Is ``tensor`` the output of a layer with (secret) weights?"""
        op = self.program.producer(tensor)
        return bool(ops.get(op.kind).secret)


def program_cost(
    program: Program,
    *,
    batch: int = 1,
    config: SirnnConfig | None = None,
    acts: dict[str, str | None] | None = None,
) -> BackendResult:
    """SiRNN-style cost of ``program`` for ``batch`` samples, per program layer scope.

    ``acts`` maps requant op names to the float model's activation (``"relu"``, ``"relu6"`` or
    None, from the QGraph); without it an op is a ReLU when its lower clip is 0 and has an upper
    clip (a second comparison) only when its upper bound is below the unsigned range.
    """
    cfg = config or SirnnConfig()
    ctx = SirnnContext(program, batch, cfg, acts)
    layers: dict[str, LayerCost] = {}
    for op in program.ops:
        b = ops.get(op.kind).sirnn(op, ctx)
        lc = layers.setdefault(op.name, LayerCost(op.name, []))
        lc.kinds.append(op.kind)
        lc.online_bits += int(b.bits)
        lc.rounds += int(b.rounds)
    seeds = LayerCost("(base OTs)", ["setup"], setup_bits=BASE_OT_SETUP_BYTES * 8)
    return BackendResult.from_layers(
        "sirnn-style",
        (
            "cost model of EzPC SCI protocols at the artifact's bit widths; anchors reproduced"
            " exactly"
            if cfg.mixed
            else f"cost model of EzPC SCI protocols (W={cfg.width}, f={cfg.f}; anchors reproduced"
            " exactly)"
        ),
        TRUST,
        batch,
        [seeds, *layers.values()],
        extra={"width": "artifact" if cfg.mixed else cfg.width, "frac": cfg.f},
    )


def micro_costs(op: str, ell: int, n: int = 1) -> dict:
    """SiRNN-style figures for the micro-benchmarks' ops at width ``ell`` (per element)."""
    table = {
        "open": Bits(2 * ell, 1),  # reconstruct: both shares sent
        "comparison": msb(ell),
        "relu": relu(ell),
        "requant_relu": truncate_and_reduce(2 * ell, ell) + relu(ell),
        "extension": z_extend(ell, 2 * ell),
        "maxpool2x2": Bits(3 * relu(ell).bits, 3 * relu(ell).rounds),
    }
    b = table[op]
    return {"bits_per_element": b.bits, "rounds": b.rounds, "total_bits": b.bits * n}
