"""SCI's OT-based protocols as cost formulas (the SiRNN-style baseline's building blocks).

SiRNN (Rathee et al., S&P 2021) evaluates fixed-point networks with the OT-based building blocks
of the SCI library (mpc-msri/EzPC, ``SCI/src``). This module does not run them; it counts the
bits their code sends, per element, from the code's structure, and walks an integer program with
every op as a *separate* protocol at one uniform fixed-point width ``W`` (no fusion, no mixed
precision). It is checked against byte counts measured from a build of SCI (two processes,
loopback; ``privquant/baselines/sci_ops.json``, :func:`anchor_fit`): every anchor is reproduced
exactly (0.0% error).

Trust model: SCI is **dealer-free** (two parties, OT extension); PrivQuant's figures assume a
non-colluding dealer. Reports state this next to every SiRNN figure.

Primitive costs (bits per element, both directions together; ``lambda = 128`` for IKNP OT
extension, 256 for SCI's 1-out-of-N KKOT code; sources are files under ``SCI/src``)::

  COT_l   (IKNP correlated OT, l-bit message)      128 + l              OT/iknp.h
  KKOT_N,l (1-out-of-N OT, l-bit messages)          256 + N*l            OT/split-kkot.h
  Mill(l)  millionaire, radix 4, WAN_EXEC build    288*q + 148*(2q-2-D) Millionaire/millionaire.h
           q = ceil(l/4) digits, D = ceil(log2 q); every leaf is a KKOT_16,2 (288), every AND
           a bit triple from KKOT_16,2 shared by 2 triples (144) plus its opening (4 bits)
  MillEq(l) comparison + equality (truncation)     288*(q-1) + leaf(r) + 144*2(q-1)
           leaf(r) = 288, 132, 264, 272 for r = l mod 4 = 0..3; the 2(q-1) ANDs use correlated
           triples from KKOT_8,2 (136 per triple) and open e, f twice (8 bits)
                                                   Millionaire/millionaire_with_equality.h
  AND      one KKOT_16,2 computes 2 ANDs           144      BuildingBlocks/aux-protocols.cpp
  B2A(n)   one COT_n                               128 + n  (0 if n <= 1)
  MSB_to_Wrap  KKOT_4,1 lookup                      260
  Mux(n)   two COT_n (one each way)                2*(128 + n)
  wrap(m)  = Mill(m), or MSB_to_Wrap when the MSB is known
  z/s_extend(m -> n)   wrap(m) + B2A(n - m)         BuildingBlocks/value-extension.cpp
  truncate_and_reduce(bw, s)   Mill(s) + B2A(bw - s)        BuildingBlocks/truncation.cpp
  trunc(bw, s)  (exact, signed, same ring)  Mill(s) + MillEq(bw-s) + AND + B2A(s) + B2A(bw)
  MSB(bw) = Mill(bw - 1);   ReLU(bw) = MSB(bw) + Mux(bw)                 Math/math-functions.cpp

Linear layers (``LinearOT::matrix_multiplication``, LinearOT/linear-ot.cpp, with
``MultMode::Alice_has_B``: the server, holding W in the clear, is the **OT receiver** and uses the
bits of W as choice bits), im2col form ``A (M x K) @ W (K x N)``, ``e = ceil(log2 K)`` extra
accumulator bits, output width ``bwC = 2W`` (SiRNN's product width ``bwA + bwB``)::

  extension  A: W -> W + e                    n_x * z/s_extend(W, W+e)   (MSB known after ReLU)
  cross terms K*N*b_w COTs, M messages each    K*N*(128*W + M*(W*(bwC+e) - W(W-1)/2))
             (EzPC's ``cross_term_cost`` helper: d1*d2*(128*m + d3*(m*(l-m) + (m^2+m)/2)))
  wrap of A  (bwC > bwA)                       n_x * wrap(W + e)
  multiplexer wA * W                           M*K * (128 + 2*N*(bwC - W))
  truncate_and_reduce(e, bwC + e)              M*N * (Mill(e) + B2A(bwC))

Elementwise steps (extension, wrap) are charged once per input feature-map element ``n_x``
rather than per im2col element as SCI's matmul does: this favours the baseline. Widths for which
``2W + e`` exceeds SCI's 64-bit words (``W = 32, 37``) use the uniform-ring form of CrypTFlow2's OT
linear layers instead: products mod ``2^W`` (cross terms with ``bwC = W``, no extension, wrap or
multiplexer) followed by the exact truncation ``trunc(W, f)``.

Other ops, each separate: requantization = ``truncate_and_reduce(f, 2W)`` of the accumulator
(``f`` fractional bits: 8 at W = 16, 12 otherwise) then ``ReLU(W)``, and a second ReLU-style
comparison+multiplexer for an upper clip (ReLU6); residual add = SiRNN's ``MatAdd``:
``2 * s_extend(W, W+1) + truncate_and_reduce(1, W+1)``; average pooling = extension by
``h = ceil(log2 window)`` then ``truncate_and_reduce(h, W+h)``; max pooling = ``window - 1``
rounds of ``ReLU(W)``-style max; the client's input share and flatten are free; the logits are
opened to the client (``n * width`` bits). SCI runs everything online (OT extension included);
the one-time base OTs (about 458 KB, excluded from the anchors) are the setup cost.

Rounds are the Lamport depth of the messages as SCI sends them (an OT is 2 hops, one AND level
or one opening 1 hop), summed over sequential sub-protocols. SCI's own ``rounds_counter`` counts
one party's direction switches and is rough; the anchors' values are shown next to ours.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privquant.errors import PrivQuantError

LAMBDA = 128  # IKNP OT extension: bits the receiver sends per (2 choose 1) OT
KKOT_LAMBDA = 256  # SCI's KKOT (1-out-of-N OT) code length
RADIX = 4  # MILL_PARAM: millionaire digits of 4 bits
BASE_OT_SETUP_BYTES = 458_000  # one-time base OT / IKNP setup (anchors' note: "about 458 KB")
TRUST = "dealer-free: two parties, OT extension (SCI)"
DEFAULT_WIDTH = 16
# per-op byte counts measured from a build of EzPC SCI (copy of the shared anchors file)
ANCHORS_PATH = Path(__file__).resolve().parent / "sci_ops.json"


def clog2(x: int) -> int:
    return 0 if x <= 1 else math.ceil(math.log2(x))


@dataclass(frozen=True)
class Bits:
    """Per-element cost: ``bits`` (both directions) and ``rounds`` (sequential hops)."""

    bits: int
    rounds: int

    def __add__(self, other: Bits) -> Bits:  # sequential
        return Bits(self.bits + other.bits, self.rounds + other.rounds)

    def times(self, n: int) -> int:
        return int(self.bits) * int(n)


ZERO = Bits(0, 0)
OT_ROUNDS = 2


def cot(msg_bits: int) -> Bits:
    """IKNP correlated OT with an ``msg_bits``-bit message."""
    return Bits(LAMBDA + msg_bits, OT_ROUNDS)


def kkot(n: int, msg_bits: int) -> Bits:
    """SCI's 1-out-of-``n`` OT with ``msg_bits``-bit messages."""
    return Bits(KKOT_LAMBDA + n * msg_bits, OT_ROUNDS)


AND_BITS = kkot(16, 2).bits // 2  # 144: one KKOT_16,2 yields two ANDs (aux-protocols.cpp AND)


def mill(bits: int) -> Bits:
    """Millionaire's comparison of ``bits``-bit values (radix 4, WAN_EXEC: all leaves
    KKOT_16,2, all AND triples from KKOT_16,2 with a 4-bit opening)."""
    if bits <= 0:
        return ZERO
    q = -(-bits // RADIX)
    d = clog2(q)
    ands = 2 * q - 2 - d
    leaves = q * kkot(16, 2).bits
    return Bits(leaves + ands * (AND_BITS + 4), 2 * OT_ROUNDS + d)


def mill_eq(bits: int) -> Bits:
    """Comparison with equality (``MillionaireWithEquality::compare_with_eq``)."""
    if bits <= 0:
        return ZERO
    if bits <= RADIX:  # bitlen_lt_beta: one KKOT_{2^bits},2 (an IKNP OT for one bit)
        return Bits((LAMBDA + 2 * 2) if bits == 1 else kkot(1 << bits, 2).bits, OT_ROUNDS)
    q = -(-bits // RADIX)
    r = bits % RADIX
    last = {0: kkot(16, 2).bits, 1: LAMBDA + 2 * 2, 2: kkot(4, 2).bits, 3: kkot(8, 2).bits}[r]
    leaves = (q - 1) * kkot(16, 2).bits + last
    ands = 2 * (q - 1)
    corr_triple = kkot(8, 2).bits // 2  # 136
    return Bits(leaves + ands * (corr_triple + 8), 2 * OT_ROUNDS + clog2(q))


def and_gate() -> Bits:
    return Bits(AND_BITS, OT_ROUNDS)


def b2a(n: int) -> Bits:
    return ZERO if n <= 1 else cot(n)


def msb_to_wrap() -> Bits:
    return kkot(4, 1)


def mux(n: int) -> Bits:
    return Bits(2 * (LAMBDA + n), OT_ROUNDS + 1)


def wrap(m: int, msb_known: bool = False) -> Bits:
    return msb_to_wrap() if msb_known else mill(m)


def z_extend(m: int, n: int, msb_known: bool = False) -> Bits:
    """``XTProtocol::z_extend`` (``s_extend`` costs the same)."""
    if n <= m:
        return ZERO
    return wrap(m, msb_known) + b2a(n - m)


s_extend = z_extend


def truncate_and_reduce(bw: int, shift: int) -> Bits:
    if shift <= 0:
        return ZERO
    return mill(shift) + b2a(bw - shift)


def trunc(bw: int, shift: int, msb_known: bool = False) -> Bits:
    """``Truncation::truncate`` (exact, signed, stays in ``Z_{2^bw}``)."""
    if shift <= 0:
        return ZERO
    upper = msb_to_wrap() if msb_known else mill_eq(bw - shift) + and_gate()
    return mill(shift) + upper + b2a(shift) + b2a(bw)


def msb(bw: int) -> Bits:
    return mill(bw - 1)


def relu(bw: int) -> Bits:
    return msb(bw) + mux(bw)


OPS = {
    "relu": lambda m: relu(m["bits"]),
    "msb": lambda m: msb(m["bits"]),
    "trunc": lambda m: trunc(m["bits"], m["shift"]),
    "truncate_and_reduce": lambda m: truncate_and_reduce(m["bits"], m["shift"]),
    "s_extend": lambda m: s_extend(m["bits"], m["to_bits"]),
    "z_extend": lambda m: z_extend(m["bits"], m["to_bits"]),
}


def op_bits(name: str, **params) -> Bits:
    """Per-element cost of one anchor-style op (``bits``, ``shift``, ``to_bits`` as in the
    anchors file)."""
    if name not in OPS:
        raise PrivQuantError(f"unknown SCI op {name!r}; known: {sorted(OPS)}")
    return OPS[name](params)


def anchor_fit(path: str | Path = ANCHORS_PATH) -> list[dict]:
    """Model vs measured bytes for every anchor (``op, bits, ..., model_bytes, error_pct``)."""
    p = Path(path)
    if not p.is_file():
        raise PrivQuantError(f"SCI anchors file not found: {p}")
    data = json.loads(p.read_text())
    rows = []
    for m in data["measurements"]:
        b = op_bits(m["op"], **{k: v for k, v in m.items() if k != "op"})
        model_bytes = b.bits * m["n"] / 8
        rows.append(
            {
                "op": m["op"],
                "bits": m["bits"],
                "shift": m.get("shift"),
                "to_bits": m.get("to_bits"),
                "n": m["n"],
                "measured_bytes": m["total_bytes"],
                "model_bytes": model_bytes,
                "error_pct": 100.0 * (model_bytes - m["total_bytes"]) / m["total_bytes"],
                "bytes_per_element": model_bytes / m["n"],
                "measured_rounds_counter": m.get("rounds_counter"),
                "model_rounds": b.rounds,
            }
        )
    return rows


# ------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class SirnnConfig:
    """Uniform fixed-point width ``width`` for activations and weights, ``frac`` fractional bits;
    or, with ``mixed=True``, every tensor at the artifact's own bit widths (SiRNN's mixed-bitwidth
    protocols at the same widths as the quantized program: the network input at 8 bits, each
    activation at its quantizer's bits, each layer's weights at its ``w_bits``)."""

    width: int = DEFAULT_WIDTH
    frac: int | None = None
    mixed: bool = False

    def __post_init__(self):
        if not 4 <= self.width <= 48:
            raise PrivQuantError(f"SiRNN-style width must be 4..48 bits, got {self.width}")

    @property
    def f(self) -> int:
        return self.frac if self.frac is not None else (8 if self.width <= 16 else 12)

    def extend_mode(self, k: int) -> bool:
        """SiRNN's mixed-bitwidth matmul fits SCI's 64-bit words: ``2W + ceil(log2 K) <= 64``."""
        return 2 * self.width + clog2(k) <= 64

    @property
    def label(self) -> str:
        if self.mixed:
            return "sirnn-style (the artifact's bit widths)"
        return f"sirnn-style (W={self.width}, f={self.f})"


def numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def linear_layer(
    m: int,
    k: int,
    n_out: int,
    n_x: int,
    cfg: SirnnConfig,
    *,
    groups: int = 1,
    msb_known=False,
    b_a: int | None = None,
    b_w: int | None = None,
) -> Bits:
    """Total bits (and rounds) of one im2col matmul layer: ``groups`` x (M x K) @ (K x N), the
    shared input feature map having ``n_x`` elements (see the module docstring). Activations of
    ``b_a`` bits and weights of ``b_w`` bits (default: the uniform ``cfg.width``); the product
    width is ``b_a + b_w`` (SiRNN's ``bwC = bwA + bwB``)."""
    W = cfg.width
    Wa = W if b_a is None else int(b_a)
    Ww = W if b_w is None else int(b_w)
    e = clog2(k)
    tri = Ww * (Ww - 1) // 2
    if cfg.mixed or cfg.extend_mode(k):
        bwc = Wa + Ww
        ext = z_extend(Wa, Wa + e, msb_known)
        cross = groups * k * n_out * (LAMBDA * Ww + m * (Ww * (bwc + e) - tri))
        wrap_a = wrap(Wa + e, msb_known)
        mx = groups * m * k * (LAMBDA + 2 * n_out * (bwc - Wa))
        tr = truncate_and_reduce(bwc + e, e)
        bits = n_x * ext.bits + cross + n_x * wrap_a.bits + mx + groups * m * n_out * tr.bits
        rounds = ext.rounds + OT_ROUNDS + wrap_a.rounds + mux(1).rounds + tr.rounds
        return Bits(int(bits), rounds)
    cross = groups * k * n_out * (LAMBDA * W + m * (W * W - tri))
    return Bits(int(cross), OT_ROUNDS)


def acc_width(cfg: SirnnConfig, k: int, b_a: int | None = None, b_w: int | None = None) -> int:
    """Width of a linear layer's output in the baseline (``b_a + b_w`` when mixed)."""
    if cfg.mixed:
        return int(b_a) + int(b_w)
    return 2 * cfg.width if cfg.extend_mode(k) else cfg.width
