"""The protocol catalogue rendered from the code: every protocol's ``cost()`` on a few public
signatures, under the dealer, then its dealer-free counterpart's (:mod:`privquant.protocols.ot`,
``cost(sig, "ot")`` at the default SoftSpokenOT parameter) on the same signatures. ``render()``
produces the tables that the package docstring (:mod:`privquant.protocols`) and
``docs/protocols.md`` show; a test fails when they drift.
"""

from __future__ import annotations

from privquant.protocols.argmax import ARGMAX, ArgmaxSig
from privquant.protocols.basic import OPEN, OPEN_TO, OpenSig, OpenToSig
from privquant.protocols.compare import CIRCUIT, COMPARE, CompareSig, Group, circuit
from privquant.protocols.lift import LIFT, LiftSig
from privquant.protocols.linear import LINEAR, LinearSig
from privquant.protocols.lut import LUT, LutSig
from privquant.protocols.maxpool import MAXPOOL, MaxpoolSig
from privquant.protocols.mul import MUL, MulSig
from privquant.protocols.requant import FUSED, UNFUSED, RequantSig

N = 1000  # elements (or output windows) per example row


def examples():
    """(protocol, signature description, protocol object, signature) rows."""
    relu_clip = RequantSig(N, 20, 12, 0, 15, -(1 << 19), (1 << 19) - 1, 20)
    conv = LinearSig("conv2d", (1, 16, 8, 8), (32, 16, 3, 3), 20, (1, 1), (1, 1), 1, "c")
    yield "open", f"n={N}, ell=16", OPEN, OpenSig((N,), 16)
    yield "open_to / output", f"n={N}, ell=16", OPEN_TO, OpenToSig((N,), 16)
    yield "linear conv 16->32, 3x3", "8x8, ell=20", LINEAR, conv
    yield "circuit (1 job, 19 bits)", f"n={N}", CIRCUIT, circuit([Group(N, 0, (19,))])
    yield "compare x >= 0", f"n={N}, ell=20", COMPARE, CompareSig(N, 20, (0,))
    yield "lift Z_2^5 -> Z_2^20", f"n={N}", LIFT, LiftSig(N, 5, 20)
    yield "requant ReLU + 4-bit clip", f"n={N}, L=20, k=12, L'=20", FUSED, relu_clip
    yield "requant (unfused)", f"n={N}, L=20, k=12, L'=20", UNFUSED, relu_clip
    yield (
        "maxpool 2x2",
        "8x8x16 in, 4-bit, L=6",
        MAXPOOL,
        MaxpoolSig((1, 16, 8, 8), (2, 2), (2, 2), (0, 0), 0, 15, 6, 6),
    )
    gelu4 = LutSig(N, 4, -8, tuple([0] * 8 + list(range(0, 15, 2))), 0, 15, 16)
    yield "lut 4-bit -> Z_2^16", f"n={N}, 4-bit output", LUT, gelu4
    yield "mul x * y", f"n={N}, ell=16", MUL, MulSig((N,), (N,), 16)
    lo, hi = -(1 << 14), (1 << 14) - 1
    yield "argmax (label)", "1 image, 10 classes, L=16", ARGMAX, ArgmaxSig(1, 10, 1, lo, hi, 16, 5)
    yield "top-3", "1 image, 10 classes, L=16", ARGMAX, ArgmaxSig(1, 10, 3, lo, hi, 16, 5)


def dealer_free(proto):
    """The dealer-free protocol for the same signature (None: no standalone counterpart; the
    openings need no correlation and are their own)."""
    from privquant.protocols import ot
    from privquant.protocols.ot.argmax import OT_ARGMAX
    from privquant.protocols.ot.lut import OT_LUT
    from privquant.protocols.ot.mul import OT_MUL

    pairs = [
        (OPEN, OPEN),
        (OPEN_TO, OPEN_TO),
        (LINEAR, ot.OT_LINEAR),
        (COMPARE, ot.OT_COMPARE),
        (LIFT, ot.OT_LIFT),
        (FUSED, ot.OT_FUSED),
        (UNFUSED, ot.OT_UNFUSED),
        (MAXPOOL, ot.OT_MAXPOOL),
        (LUT, OT_LUT),
        (MUL, OT_MUL),
        (ARGMAX, OT_ARGMAX),
    ]
    return next((o for d, o in pairs if d is proto), None)


def _table(head, rows) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    rule = "  ".join("=" * w for w in widths)
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([rule, fmt(head), rule, *(fmt(r) for r in rows), rule])


def _bits(c) -> tuple[str, ...]:
    return (str(c.online_bits), str(c.offline_bits), str(c.setup_bits), str(c.rounds))


def render() -> str:
    """The catalogue as RST simple tables of bits (online, offline, setup) and rounds: under the
    dealer, then without one (same rows and signatures)."""
    dealer, free = [], []
    for name, desc, proto, sig in examples():
        dealer.append((name, desc, *_bits(proto.cost(sig, "dealer"))))
        other = dealer_free(proto)
        free.append((name, *(_bits(other.cost(sig, "ot")) if other else ("-",) * 4)))
    return "\n".join(
        [
            _table(("protocol", "signature", "online", "offline", "setup", "rounds"), dealer),
            "",
            "Without a dealer (``ot``: OT extension, SoftSpokenOT k = 4; the same signatures;",
            "per-session setup such as base OTs and HE keys is not shown):",
            "",
            _table(("protocol", "online", "offline", "setup", "rounds"), free),
        ]
    )
