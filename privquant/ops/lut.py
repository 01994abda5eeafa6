"""``lut``: an elementwise function of a quantized activation as a public lookup table.

``y = table[x - lo]`` for an input ``x`` in ``[lo, lo + 2^bits)`` (``bits <= 8``). The float-graph
facet (:class:`LutGraph`, node kind ``lut``) captures GELU, SiLU, Sigmoid, Hardswish, Hardsigmoid,
LeakyReLU, Tanh, ELU, Mish, Softplus -- and a ReLU/ReLU6 that cannot be fused into the op before
it (e.g. a pre-activation ReLU on a tensor that also feeds a residual add) -- as a node whose
activation quantizer it owns: the table maps every input code ``q`` to
``clip(round(f(q * s_in) / s_out), qmin, qmax)``, the quantized function itself. The table is
computed with Python's ``math`` on float64 (the scales rounded to float32 first, as the fake-quant
model holds them) by :func:`table_values`, and both the fake-quant model and the integer program
read it, so they agree *exactly* (no 1-LSB rounding slack as for requantization).

The input is the output of an activation quantizer (usually the requant right before it) and
needs no ring wider than its own bounds (no ring atom), so that requant emits it in its small
ring. When no layer reads that quantizer, it takes ``LUT_INPUT_EXTRA_BITS = 2`` more bits than
the activations after the table (at most 8): the function is sampled on a 4x finer grid than its
output (at w4a4 a 6-bit, 64-entry table; measured on a Fashion-MNIST SiLU net, a 4-bit table input
loses several points that 6 bits recover). Outputs are unsigned for non-negative functions
(Sigmoid, Hardsigmoid, Softplus, ReLU); GELU, SiLU, Hardswish and Mish keep 1/16 of their output
codes below zero for their small negative dip (at least -0.17, -0.28, -0.375, -0.31; clipping the
dip to 0 cost 3.6 points at w8a8 on that net); Tanh, LeakyReLU and ELU are signed.

Two-party protocol: :class:`privquant.protocols.lut.Lut` (rotated one-hot vector from the dealer;
cost ``2*n*bits`` online bits and ``n*2^bits*Lp`` offline bits, see there); without a dealer
(``ot``): :class:`privquant.protocols.ot.lut.OtLut` (one 1-out-of-2^bits OT per element, P0 the
rotated masked table, P1 choosing by its share; ``n*(bits + 2^bits*Lp)`` online bits, see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from privquant.errors import PrivQuantError
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.lut import LUT, MAX_INDEX_BITS, LutSig
from privquant.protocols.ot.lut import OT_LUT

#: the quantizer feeding a lookup activation (when no layer reads it) takes this many more bits
#: than the activations after it, at most 8: the table then samples the function on a 4x finer
#: input grid (at w4a4: 6-bit tables, 64 entries)
LUT_INPUT_EXTRA_BITS = 2


# ---------------------------------------------------------------------- the functions
def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _softplus(x: float, beta: float = 1.0, threshold: float = 20.0) -> float:
    if beta * x > threshold:
        return x
    bx = beta * x
    return (max(bx, 0.0) + math.log1p(math.exp(-abs(bx)))) / beta


@dataclass(frozen=True)
class Fn:
    """One supported elementwise function: its float64 scalar form (the table), its torch form
    (float model, QAT gradients), its CrypTen form (baseline), output sign and monotonicity."""

    name: str
    scalar: Callable[[float, tuple], float]
    torch: Callable[[torch.Tensor, tuple], torch.Tensor]
    unsigned: bool
    crypten: Callable
    spelled: str
    note: str = ""
    dip: bool = False  # a small negative tail: the output quantizer keeps 1/16 of its codes < 0


def _ct_gelu(x, p):
    return x * ((x * (1.0 / math.sqrt(2.0))).erf() + 1.0) * 0.5


def _ct_hardsigmoid(x):
    return (x + 3.0).hardtanh(0.0, 6.0) * (1.0 / 6.0)


def _ct_softplus(x, p):
    beta = p[0]
    return ((x * beta).exp() + 1.0).log() * (1.0 / beta)


FUNCTIONS: dict[str, Fn] = {
    f.name: f
    for f in (
        Fn(
            "gelu",
            lambda x, p: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))),
            lambda x, p: F.gelu(x),
            True,
            _ct_gelu,
            "`nn.GELU()`, `F.gelu`",
            "dip (>= -0.17) kept by 1/16 negative codes",
            dip=True,
        ),
        Fn(
            "gelu_tanh",
            lambda x, p: (
                0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
            ),
            lambda x, p: F.gelu(x, approximate="tanh"),
            True,
            lambda x, p: (
                x * ((x + x * x * x * 0.044715) * math.sqrt(2.0 / math.pi)).tanh().add(1.0) * 0.5
            ),
            "`nn.GELU('tanh')`, `F.gelu(x, approximate='tanh')`",
            "dip kept by 1/16 negative codes",
            dip=True,
        ),
        Fn(
            "silu",
            lambda x, p: x * _sigmoid(x),
            lambda x, p: F.silu(x),
            True,
            lambda x, p: x * x.sigmoid(),
            "`nn.SiLU()`, `F.silu`",
            "dip (>= -0.28) kept by 1/16 negative codes",
            dip=True,
        ),
        Fn(
            "sigmoid",
            lambda x, p: _sigmoid(x),
            lambda x, p: torch.sigmoid(x),
            True,
            lambda x, p: x.sigmoid(),
            "`nn.Sigmoid()`, `torch.sigmoid`, `x.sigmoid()`",
        ),
        Fn(
            "hardswish",
            lambda x, p: x * min(max(x + 3.0, 0.0), 6.0) / 6.0,
            lambda x, p: F.hardswish(x),
            True,
            lambda x, p: x * _ct_hardsigmoid(x),
            "`nn.Hardswish()`, `F.hardswish`",
            "dip (>= -0.375) kept by 1/16 negative codes",
            dip=True,
        ),
        Fn(
            "hardsigmoid",
            lambda x, p: min(max(x / 6.0 + 0.5, 0.0), 1.0),
            lambda x, p: F.hardsigmoid(x),
            True,
            lambda x, p: _ct_hardsigmoid(x),
            "`nn.Hardsigmoid()`, `F.hardsigmoid`",
        ),
        Fn(
            "leaky_relu",
            lambda x, p: x if x >= 0 else p[0] * x,
            lambda x, p: F.leaky_relu(x, p[0]),
            False,
            lambda x, p: x.relu() - (-x).relu() * p[0],
            "`nn.LeakyReLU(a)`, `F.leaky_relu`",
        ),
        Fn(
            "tanh",
            lambda x, p: math.tanh(x),
            lambda x, p: torch.tanh(x),
            False,
            lambda x, p: x.tanh(),
            "`nn.Tanh()`, `torch.tanh`, `x.tanh()`",
        ),
        Fn(
            "elu",
            lambda x, p: x if x > 0 else p[0] * math.expm1(x),
            lambda x, p: F.elu(x, p[0]),
            False,
            lambda x, p: x.relu() + ((-((-x).relu())).exp() - 1.0) * p[0],
            "`nn.ELU(alpha)`, `F.elu`",
        ),
        Fn(
            "mish",
            lambda x, p: x * math.tanh(_softplus(x)),
            lambda x, p: F.mish(x),
            True,
            lambda x, p: x * _ct_softplus(x, (1.0,)).tanh(),
            "`nn.Mish()`, `F.mish`",
            "dip (>= -0.31) kept by 1/16 negative codes",
            dip=True,
        ),
        Fn(
            "softplus",
            lambda x, p: _softplus(x, p[0], p[1]),
            lambda x, p: F.softplus(x, p[0], p[1]),
            True,
            _ct_softplus,
            "`nn.Softplus(beta, threshold)`, `F.softplus`",
        ),
        Fn(
            "relu",
            lambda x, p: max(x, 0.0),
            lambda x, p: F.relu(x),
            True,
            lambda x, p: x.relu(),
            "`nn.ReLU` / `F.relu` that cannot fuse into the op before it",
            "else fused into that op's requantization",
        ),
        Fn(
            "relu6",
            lambda x, p: min(max(x, 0.0), 6.0),
            lambda x, p: F.relu6(x),
            True,
            lambda x, p: x.hardtanh(0.0, 6.0),
            "`nn.ReLU6` / `F.relu6` that cannot fuse into the op before it",
            "else fused into that op's requantization",
        ),
    )
}


def _f32(v: float) -> float:
    return float(np.float32(v))


def table_values(
    fn: str, param, codes, s_in: float, s_out: float, qmin: int, qmax: int
) -> list[int]:
    """``clip(round(f(q * s_in) / s_out), qmin, qmax)`` for every input code ``q`` (Python floats,
    round half to even like ``torch.round``; both scales rounded to float32 first). The one
    definition of a lookup activation shared by the fake-quant model and the lowering."""
    f = FUNCTIONS[fn].scalar
    p = tuple(param or ())
    s_in, s_out = _f32(s_in), _f32(s_out)
    out = []
    for q in codes:
        v = f(int(q) * s_in, p) / s_out
        if not math.isfinite(v):
            raise PrivQuantError(f"activation {fn}: table entry is not finite")
        out.append(min(max(round(v), qmin), qmax))
    return out


# ---------------------------------------------------------------------- capture
_MODULES: dict[type, Callable[[nn.Module], tuple[str, tuple]]] = {
    nn.GELU: lambda m: ("gelu_tanh" if m.approximate == "tanh" else "gelu", ()),
    nn.SiLU: lambda m: ("silu", ()),
    nn.Sigmoid: lambda m: ("sigmoid", ()),
    nn.Hardswish: lambda m: ("hardswish", ()),
    nn.Hardsigmoid: lambda m: ("hardsigmoid", ()),
    nn.LeakyReLU: lambda m: ("leaky_relu", (float(m.negative_slope),)),
    nn.Tanh: lambda m: ("tanh", ()),
    nn.ELU: lambda m: ("elu", (float(m.alpha),)),
    nn.Mish: lambda m: ("mish", ()),
    nn.Softplus: lambda m: ("softplus", (float(m.beta), float(m.threshold))),
    nn.ReLU6: lambda m: ("relu6", ()),  # before ReLU: ReLU6 subclasses Hardtanh, not ReLU
    nn.ReLU: lambda m: ("relu", ()),
}


def _arg(n, i: int, name: str, default):
    if len(n.args) > i:
        return n.args[i]
    return n.kwargs.get(name, default)


def _functions() -> dict:
    return {
        F.gelu: lambda n: (
            "gelu_tanh" if _arg(n, 1, "approximate", "none") == "tanh" else "gelu",
            (),
        ),
        F.silu: lambda n: ("silu", ()),
        torch.sigmoid: lambda n: ("sigmoid", ()),
        F.sigmoid: lambda n: ("sigmoid", ()),
        F.hardswish: lambda n: ("hardswish", ()),
        F.hardsigmoid: lambda n: ("hardsigmoid", ()),
        F.leaky_relu: lambda n: ("leaky_relu", (float(_arg(n, 1, "negative_slope", 0.01)),)),
        torch.tanh: lambda n: ("tanh", ()),
        F.tanh: lambda n: ("tanh", ()),
        F.elu: lambda n: ("elu", (float(_arg(n, 1, "alpha", 1.0)),)),
        F.mish: lambda n: ("mish", ()),
        F.softplus: lambda n: (
            "softplus",
            (float(_arg(n, 1, "beta", 1.0)), float(_arg(n, 2, "threshold", 20.0))),
        ),
        F.relu: lambda n: ("relu", ()),
        torch.relu: lambda n: ("relu", ()),
        F.relu6: lambda n: ("relu6", ()),
    }


_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu"}


def function_of(n, mods) -> tuple[str, tuple] | None:
    """``(function, params)`` if fx node ``n`` applies a supported elementwise function."""
    if n.op == "call_module":
        m = mods[n.target]
        for cls, get in _MODULES.items():
            if isinstance(m, cls):
                return get(m)
        return None
    if n.op == "call_function":
        get = _functions().get(n.target)
        return get(n) if get is not None else None
    if n.op == "call_method" and n.target in _METHODS:
        return _METHODS[n.target], ()
    return None


class LutGraph(GraphKind):
    """A standalone elementwise activation on a quantized tensor, evaluated as a lookup table;
    it owns its output quantizer (its ``requant`` emits the ``lut`` op, no requantization)."""

    name = "lut"
    quantized = "always"
    supported = tuple(
        (f.spelled, "lookup table" + (f"; {f.note}" if f.note else "")) for f in FUNCTIONS.values()
    )

    def capture(self, n, mods, src):
        hit = function_of(n, mods)
        if hit is None:
            return None
        fn, param = hit
        return QNode(n.name, "lut", [src(n.args[0])], attrs={"fn": fn, "param": list(param)})

    def input_bits(self, bits: int) -> int:
        return min(MAX_INDEX_BITS, bits + LUT_INPUT_EXTRA_BITS)

    def dip(self, node) -> bool:
        return self.fn(node).dip

    @staticmethod
    def fn(node) -> Fn:
        try:
            return FUNCTIONS[node.attrs["fn"]]
        except KeyError:
            raise PrivQuantError(f"unknown activation {node.attrs.get('fn')!r}") from None

    def signed(self, node, inputs_signed):
        return not self.fn(node).unsigned

    def forward(self, node, xs, params=None):
        return self.fn(node).torch(xs[0], tuple(node.attrs.get("param", ())))

    def fake_quant(self, node, xs, yq, in_scales, s_out, qz):
        s_in = in_scales[0]
        if s_in is None:
            raise PrivQuantError(f"activation {node.name!r} reads an unquantized tensor")
        q = torch.round(xs[0].detach() / s_in).to(torch.int64)
        codes = torch.unique(q)
        vals = table_values(
            node.attrs["fn"],
            node.attrs.get("param"),
            codes.tolist(),
            float(s_in.detach()),
            float(s_out.detach()),
            qz.qmin,
            qz.qmax,
        )
        t = torch.tensor(vals, dtype=torch.int64)[torch.searchsorted(codes, q)]
        # value: exactly the table's (t * s_out, as LSQ computes its output); gradient: LSQ's
        return t.to(yq.dtype) * s_out.detach() + (yq - yq.detach())

    def lower(self, node, ctx):
        return [ctx.tensor_of(node.inputs[0])]

    def requant(self, node, ctx, outs, qz):
        from privquant.ir import Op
        from privquant.ops.requant import requant_clip

        x = outs[0]
        xin = ctx.info(x)
        if xin.scale is None:
            raise PrivQuantError(f"activation {node.name!r} reads an unquantized accumulator")
        nb = (xin.hi - xin.lo).bit_length()
        if nb > MAX_INDEX_BITS:
            raise PrivQuantError(
                f"activation {node.name!r}: its input spans {nb} bits; lookup tables take at "
                f"most {MAX_INDEX_BITS}"
            )
        s_out = float(ctx.a_scale(node.name))
        lo, hi = requant_clip(qz, s_out)
        param = node.attrs.get("param", [])
        codes = range(xin.lo, xin.lo + (1 << nb))
        table = table_values(node.attrs["fn"], param, codes, xin.scale, s_out, lo, hi)
        attrs = {"fn": node.attrs["fn"], "param": list(param), "lo": xin.lo, "bits": nb}
        op = Op("lut", node.name, [x], node.name, attrs, {"table": np.asarray(table, np.int64)})
        return ctx.emit(op, xin.shape, lo, hi, s_out, s_out)

    def crypten(self, node, ins, ctx):
        a = node["attrs"]
        return FUNCTIONS[a["fn"]].crypten(ins[0], tuple(a.get("param", ())))


class LutKind(OpKind):
    name = "lut"
    graph = LutGraph()
    attrs = ("bits", "lo")
    arrays = ("table",)
    protocols: ClassVar[dict] = {"privquant": LUT}
    ot_protocols: ClassVar[dict] = {"privquant": OT_LUT}

    def check(self, op, program):
        nb, lo = op.attrs["bits"], op.attrs["lo"]
        if not isinstance(nb, int) or not 0 <= nb <= MAX_INDEX_BITS or not isinstance(lo, int):
            raise PrivQuantError(f"op {op.name!r}: lookup index bits must be 0..{MAX_INDEX_BITS}")
        table = op.arrays["table"]
        if table.shape != (1 << nb,):
            raise PrivQuantError(f"op {op.name!r}: table has shape {table.shape}, not (2^{nb},)")
        x, y = program.tensors[op.inputs[0]], program.tensors[op.output]
        if x.lo < lo or x.hi > lo + (1 << nb) - 1:
            raise PrivQuantError(f"op {op.name!r}: input range exceeds the table's")
        if int(table.min()) < y.lo or int(table.max()) > y.hi:
            raise PrivQuantError(f"op {op.name!r}: table entries exceed the output bounds")

    def apply(self, op, ins, program):
        table = torch.as_tensor(op.arrays["table"].astype(np.int64))
        return table[ins[0] - int(op.attrs["lo"])]

    def ring_atoms(self, op, program, t):
        return []  # reads only x mod 2^bits: its input needs no ring beyond its own bounds

    def signature(self, op, program, rings, batch):
        out = program.tensors[op.output]
        return LutSig(
            int(np.prod(batched(batch, out.shape))),
            int(op.attrs["bits"]),
            int(op.attrs["lo"]),
            tuple(int(v) for v in op.arrays["table"]),
            out.lo,
            out.hi,
            rings[op.output],
        )

    def sirnn(self, op, ctx):
        """SCI's ``lookup_table`` (a 1-out-of-2^bits KKOT with W-bit messages) on the same
        ``bits``-bit index, after truncating the W-bit input to it: a lower bound for SiRNN,
        whose math library evaluates sigmoid/tanh/GELU with several lookups and iterations."""
        from privquant.baselines import sci

        W = ctx.cfg.width
        nb = int(op.attrs["bits"])
        per = sci.truncate_and_reduce(W, max(W - nb, 0)) + sci.kkot(1 << nb, W)
        ctx.width[op.output] = W
        return sci.Bits(ctx.numel(op.output) * per.bits, per.rounds)


KIND = LutKind()
