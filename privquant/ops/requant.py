"""``requant``: ``y = clip(floor((sum_i m_i[c] * x_i + offset[c]) / 2**shift), lo, hi)``.

The one nonlinear step between two linear layers: dyadic rescale with round-half-up (``offset``
holds ``2**(shift-1)``), ReLU (``lo = 0``) and the upper clip, residual adds (several inputs, each
with its own public per-channel multiplier ``mult{i}``) all in one op. Its output is emitted
directly into the ring its consumers need (no separate extension).

Two-party protocol: :class:`privquant.protocols.requant.RequantOp` (local pre-sum in the pre-sum's
ring, then the fused truncation/clip/ring change from one masked opening); the ``--unfused``
ablation runs truncation, clip and extension as separate protocols. Ring: each input must be
shared in at least the pre-sum's ring (an ``own`` atom: ``signed_bits`` of the pre-sum bounds).
"""

from __future__ import annotations

import math
import operator
from typing import ClassVar

import numpy as np
import torch

from privquant.baselines import sci
from privquant.errors import PrivQuantError
from privquant.ops.base import OpKind, batched
from privquant.ops.graph import GraphKind, QNode
from privquant.protocols.ot.requant import OT_REQUANT, OT_REQUANT_UNFUSED
from privquant.protocols.primitives.ring import signed_bits
from privquant.protocols.requant import REQUANT, REQUANT_UNFUSED, RequantOpSig, RequantSig


def presum_bounds(op, ins) -> tuple[int, int]:
    """Bounds of ``t = sum_i m_i * x_i + offset`` inside a requant op (public); ``ins`` are the
    inputs' TensorInfos."""
    lo = hi = 0
    for i, x in enumerate(ins):
        m = op.arrays[f"mult{i}"].astype(np.int64)
        cands = np.stack([m * x.lo, m * x.hi])
        lo += int(cands.min())
        hi += int(cands.max())
    off = op.arrays["offset"].astype(np.int64)
    return lo + int(off.min()), hi + int(off.max())


def _chan(a: np.ndarray, ndim: int) -> torch.Tensor:
    """Per-channel vector (C,) -> broadcastable against (N, C, ...) with ``ndim`` sample dims."""
    t = torch.as_tensor(a.astype(np.int64))
    return t.reshape((1, -1) + (1,) * (ndim - 1))


def _tuple(a) -> tuple[int, ...]:
    return tuple(np.asarray(a, dtype=np.int64).reshape(-1).tolist())


def requant_clip(qz, s_out: float) -> tuple[int, int]:
    """Output clip range of a requant of quantizer ``qz`` (an ActQuantizer): its grid (ReLU6
    also caps at 6)."""
    lo, hi = qz.qmin, qz.qmax
    if qz.relu6:
        hi = min(hi, math.floor(6.0 / s_out + 0.5))
    return lo, hi


class AddGraph(GraphKind):
    """Residual add ``a + b`` (``+``, ``torch.add``, ``x.add(y)``) or difference ``a - b`` of two
    tensors: lowered to one requant op that rescales both branches to the output scale with
    public multipliers (negated for the subtrahend)."""

    name = "add"
    quantized = "always"
    fuses_act = True
    rescales_inputs = True
    supported = (
        ("`x + y`, `torch.add`, `x.add(y)`, `x - y` (two tensors, same shape)", "requantization"),
    )

    def capture(self, n, mods, src):
        add = (n.op == "call_function" and n.target in (operator.add, torch.add)) or (
            n.op == "call_method" and n.target == "add"
        )
        sub = (n.op == "call_function" and n.target in (operator.sub, torch.sub)) or (
            n.op == "call_method" and n.target == "sub"
        )
        if not (add or sub) or len(n.args) != 2 or n.kwargs.get("alpha", 1) != 1:
            return None
        if not all(src.is_tensor(a) for a in n.args):
            return None  # a constant: a public affine map
        attrs = {"signs": [1, -1]} if sub else {}
        return QNode(n.name, "add", [src(n.args[0]), src(n.args[1])], attrs=attrs)

    @staticmethod
    def signs(node) -> list[int]:
        return list(node.attrs.get("signs", [1] * len(node.inputs)))

    def forward(self, node, xs, params=None):
        s = self.signs(node)
        return xs[0] + xs[1] if s[1] > 0 else xs[0] - xs[1]

    def lower(self, node, ctx):
        ins = [ctx.tensor_of(i) for i in node.inputs]
        if ctx.info(ins[0]).shape != ctx.info(ins[1]).shape:
            raise PrivQuantError(f"add {node.name!r}: shapes differ")
        return ins

    def requant(self, node, ctx, outs, qz):
        reals = [sign * np.asarray(ctx.real(t)) for sign, t in zip(self.signs(node), outs)]
        return ctx.requant(node.name, outs, qz, reals=reals)

    def crypten(self, node, ins, ctx):
        return ins[0] - ins[1] if node["attrs"].get("signs", [1, 1])[1] < 0 else ins[0] + ins[1]


class RequantKind(OpKind):
    name = "requant"
    graph = AddGraph()
    arity = None
    attrs = ("shift", "lo", "hi")
    arrays = ("offset",)
    protocols: ClassVar[dict] = {"privquant": REQUANT, "privquant-unfused": REQUANT_UNFUSED}
    ot_protocols: ClassVar[dict] = {
        "privquant": OT_REQUANT,
        "privquant-unfused": OT_REQUANT_UNFUSED,
    }

    def required_arrays(self, op):
        return (*self.arrays, *(f"mult{i}" for i in range(len(op.inputs))))

    def apply(self, op, ins, program):
        t = _chan(op.arrays["offset"], ins[0].dim() - 1)
        for i, x in enumerate(ins):
            t = t + x * _chan(op.arrays[f"mult{i}"], x.dim() - 1)
        shift = int(op.attrs["shift"])
        t = t >> shift if shift > 0 else t
        return t.clamp(int(op.attrs["lo"]), int(op.attrs["hi"]))

    def presum_bounds(self, op, program) -> tuple[int, int]:
        ins = [program.tensors[i] for i in op.inputs]
        key = tuple((x.lo, x.hi) for x in ins)
        memo = op.__dict__.setdefault("_presum_memo", {})  # the op's arrays do not change
        if key not in memo:
            memo[key] = presum_bounds(op, ins)
        return memo[key]

    def ring_atoms(self, op, program, t):
        return [("own", op.output)]

    def own_ring(self, op, program) -> int:
        return signed_bits(*self.presum_bounds(op, program))

    def signature(self, op, program, rings, batch):
        tlo, thi = self.presum_bounds(op, program)
        out = batched(batch, program.tensors[op.output].shape)
        a = op.attrs
        core = RequantSig(
            int(np.prod(out)),
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

    def sirnn(self, op, ctx):
        """Each input rescaled to the output width (a truncation, or an extension), a residual
        add as SiRNN's MatAdd, then ReLU and the upper clip as comparison + multiplexer each.
        Uniform mode: every tensor at ``W`` with ``f`` fractional bits; mixed mode: at the
        artifact's own widths (output ``bits``; scales are powers of two in SiRNN)."""
        mixed = ctx.cfg.mixed
        W = int(op.attrs.get("bits", 8)) if mixed else ctx.cfg.width
        f = ctx.cfg.f
        bits = rounds = par_rounds = 0
        for t in op.inputs:  # rescale every input to W bits (in parallel)
            tw = ctx.width.get(t, W)
            if mixed:
                nonneg = ctx.program.tensors[t].lo >= 0
                if tw > W:
                    r = sci.truncate_and_reduce(tw, tw - W)
                else:
                    r = sci.z_extend(tw, W, nonneg)
            elif ctx.is_accumulator(t):
                r = sci.truncate_and_reduce(tw, f) if tw > W else sci.trunc(W, f)
            elif tw > W:
                r = sci.truncate_and_reduce(tw, tw - W)
            else:
                r = sci.ZERO
            bits += ctx.numel(t) * r.bits
            par_rounds = max(par_rounds, r.rounds)
        rounds += par_rounds
        n_out = ctx.numel(op.output)
        if len(op.inputs) > 1:  # MatAdd: extend both, add, reduce back to W bits
            ext = sci.s_extend(W, W + 1)
            tr = sci.truncate_and_reduce(W + 1, 1)
            bits += len(op.inputs) * n_out * ext.bits + n_out * tr.bits
            rounds += ext.rounds + tr.rounds
        act = (ctx.acts or {}).get(op.name, "unknown")
        lo, hi = int(op.attrs["lo"]), int(op.attrs["hi"])
        qbits = int(op.attrs.get("bits", 8))
        is_relu = act in ("relu", "relu6") if act != "unknown" else lo == 0
        has_clip = act == "relu6" if act != "unknown" else (lo == 0 and hi < (1 << qbits) - 1)
        for needed in (is_relu, has_clip):
            if needed:
                r = sci.relu(W)
                bits += n_out * r.bits
                rounds += r.rounds
        ctx.width[op.output] = W
        return sci.Bits(int(bits), rounds)


KIND = RequantKind()
