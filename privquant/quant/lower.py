"""Lower a calibrated QModel to the integer program (``privquant.program``).

For a layer with input scale ``s_in`` and per-channel weight scale ``s_w``:
``W_int = clip(round(W / s_w))``, ``bias_int = clip(round(b / (s_in * s_w)), +-bmax)``, and the
accumulator's real value is ``acc * s_in * s_w``. Each activation quantizer becomes one
``requant`` op ``clip(floor((sum_i m_i * x_i + 2^(k-1)) / 2^k), lo, hi)`` whose dyadic multipliers
``m_i / 2^k`` approximate ``s_i / s_out`` (``s_i`` the real scale of input ``i``) with the fewest
bits at which every channel errs by at most ``2^-REQUANT_ERROR_BITS`` of an output LSB
(:func:`dyadic`): the requant's ring holds ``m_i * x_i``, so every multiplier bit widens it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privquant import ops
from privquant.errors import PrivQuantError
from privquant.ops.conv2d import smallest_signed as smallest_signed
from privquant.ops.requant import requant_clip as requant_clip
from privquant.program import Op, Program, TensorInfo, requant_presum_bounds
from privquant.quant.fakequant import ActQuantizer, QModel
from privquant.quant.graph import QGraph

#: every channel's dyadic multiplier errs by at most 2^-REQUANT_ERROR_BITS of an output LSB
REQUANT_ERROR_BITS = 2


def dyadic(
    mults: list[np.ndarray],
    out_bits: int,
    max_p: int | None = None,
    reach: list[int] | None = None,
) -> tuple[list[np.ndarray], int]:
    """Integers ``m_i`` and one shift ``k >= 1`` with ``m_i / 2^k ~= mults_i``.

    ``k`` is the smallest shift at which every channel ``c`` of every input ``i`` errs by at most
    ``2^-REQUANT_ERROR_BITS`` of an output LSB: rounding ``M = mults_i[c]`` to ``m / 2^k`` errs
    by at most ``2^-(k+1) * |x|``, and the ``|x|`` that matter are bounded by the input's own
    bound ``reach[i]`` and by the clip range (``|x| * M <= 2^out_bits``), so
    ``k >= log2(min(reach_i, 2^out_bits / M)) + REQUANT_ERROR_BITS - 1`` per channel. The
    multipliers then have about ``out_bits + REQUANT_ERROR_BITS`` significant bits in their
    smallest channel, and the requant's ring (which holds ``m * x``) is no wider than that
    needs. ``max_p`` caps the largest multiplier's significant bits so that the pre-sum stays
    inside the runtime's 62-bit rings; it binds only for the wide bit widths of the internal
    uniform-bits ablation (never for 2..8-bit layers), where it trades precision for range.
    """
    per_input = [float(np.max(np.abs(m))) for m in mults]
    mmax = max(per_input)
    if not all(np.isfinite(per_input)) or mmax <= 0:
        raise PrivQuantError("requantization multiplier is zero or not finite")
    reach = [2.0**62] * len(mults) if reach is None else [float(max(r, 1)) for r in reach]
    k = 1
    for m, r in zip(mults, reach):
        a = np.abs(np.asarray(m, np.float64))
        a = a[a > 0]
        if a.size:  # the channel needing the largest shift: the smallest multiplier (or reach)
            span = min(r, 2.0**out_bits / float(a.min()))
            k = max(k, math.ceil(math.log2(span)) + REQUANT_ERROR_BITS - 1)
    if max_p is not None:
        if max_p < 2:
            raise PrivQuantError("requantization pre-sum would not fit a 62-bit ring")
        k = min(k, max_p - 1 - math.floor(math.log2(mmax)))
    k = max(1, k)
    return [np.round(np.asarray(m, np.float64) * 2.0**k).astype(np.int64) for m in mults], k


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


# |pre-sum| < 2^60 keeps it (and its ring, signed) inside the runtime's 62-bit limit
PRESUM_LOG2_LIMIT = 60


def requant_op(
    name: str,
    inputs: list[str],
    shape,
    qz: ActQuantizer,
    s_out: float,
    reals: list,
    infos: list[TensorInfo],
    bias=None,
    out: str | None = None,
) -> Op:
    """The requant op of quantizer ``qz`` (output scale ``s_out``) over ``inputs`` whose real
    scales are ``reals`` and bounds ``infos``, plus an optional real ``bias`` per channel (a
    public affine map's shift), writing tensor ``out`` (default ``name``). Shared by
    :func:`lower` and the search's cost table (``quant.costtable``), so both build the same
    public integers."""
    mults = [np.broadcast_to(r / s_out, (shape[0],)).copy() for r in reals]
    xmax = sum(max(abs(t.lo), abs(t.hi)) for t in infos)
    lo, hi = requant_clip(qz, s_out)
    room = xmax if bias is None else 2 * xmax + 4  # the bias term is at most ~xmax (clipped)
    reach = [max(abs(t.lo), abs(t.hi)) for t in infos]
    ints, k = dyadic(mults, qz.bits, PRESUM_LOG2_LIMIT - math.ceil(math.log2(room + 1)) - 1, reach)
    arrays = {f"mult{i}": m for i, m in enumerate(ints)}
    offset = np.full(shape[0], 1 << (k - 1), dtype=np.int64)
    if bias is not None:
        # round(bias / s_out) in units of 2^-k; clipped where it saturates the output anyway
        # (|bias| beyond the output range plus the largest |sum m_i x_i| / 2^k)
        reach = sum(int(np.abs(m).max()) * max(abs(t.lo), abs(t.hi)) for m, t in zip(ints, infos))
        cap = (reach >> k) + (hi - lo) + 2
        b = np.clip(np.broadcast_to(np.asarray(bias, np.float64) / s_out, (shape[0],)), -cap, cap)
        offset = offset + np.round(b * 2.0**k).astype(np.int64)
    arrays["offset"] = _i64(offset)
    op = Op(
        "requant",
        name,
        list(inputs),
        out or name,
        {"shift": k, "lo": lo, "hi": hi, "bits": qz.bits, "signed": qz.signed},
        arrays,
    )
    op.attrs["t_lo"], op.attrs["t_hi"] = requant_presum_bounds(op, infos)
    return op


class LowerContext:
    """What a graph kind's ``lower`` sees (:meth:`privquant.ops.graph.GraphKind.lower`).

    Subclasses say where bit widths and step sizes come from: :class:`QModelContext` (a
    calibrated QModel: :func:`lower`) or the search's symbolic lowering
    (``privquant.quant.costtable``), which runs the very same per-node lowering lazily and records
    which decision variables each tensor depends on. ``emit`` records an op, its output's bounds
    and its real scale; the quantizer step after a node (a ``requant`` op) is added here, so
    every graph kind only describes its own ops.
    """

    graph: QGraph
    final: str

    def __init__(self, graph: QGraph, final: str):
        self.graph = graph
        self.final = final
        self.input_shape = tuple(graph.input_shape)
        self.ops: dict[str, Op] = {}  # output tensor -> op
        self.order: list[str] = []
        self.tensors: dict[str, TensorInfo] = {}
        self.reals: dict[str, np.ndarray] = {}
        self.produced: dict[str, str] = {}  # QNode name -> tensor holding its value

    # -- bits and scales (per context)
    def w_bits(self, layer: str) -> int:
        raise NotImplementedError

    def w_scale(self, layer: str) -> np.ndarray:
        raise NotImplementedError

    def quantizer(self, q: str) -> ActQuantizer | None:
        """The activation quantizer after node ``q`` (None if it has none)."""
        raise NotImplementedError

    def a_scale(self, q: str) -> float:
        raise NotImplementedError

    def int_params(self, layer: str, s_in) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The layer's integer weight and bias, or None when only public fields are wanted."""
        return None

    # -- the graph as lowered so far
    def is_final(self, layer: str) -> bool:
        return layer == self.final

    def tensor_of(self, node: str) -> str:
        """The tensor holding QNode ``node``'s (possibly quantized) value."""
        return self.produced[node]

    def info(self, tensor: str) -> TensorInfo:
        return self.tensors[tensor]

    def real(self, tensor: str) -> np.ndarray:
        return self.reals[tensor]

    def emit(self, op: Op, shape, lo, hi, scale=None, real=None) -> str:
        t = op.output
        self.ops[t] = op
        self.order.append(t)
        self.tensors[t] = TensorInfo(t, tuple(int(s) for s in shape), int(lo), int(hi), scale)
        self.reals[t] = np.asarray(real)
        return t

    # -- one node
    def lower_node(self, node) -> str:
        """Lower ``node`` (its kind's ops, then its quantizer's requant) and return its tensor."""
        return self.finish(node, self.lower_own(node))

    def lower_own(self, node) -> list[str]:
        """The node kind's own ops; returns the tensors its quantizer requantizes jointly."""
        return ops.graph_kind(node.kind).lower(node, self)

    def finish(self, node, outs: list[str]) -> str:
        """The node's quantizer step (its kind's :meth:`~privquant.ops.graph.GraphKind.requant`,
        by default a requant op over ``outs``), if it has one."""
        qz = self.quantizer(node.name)
        if qz is not None:
            out = ops.graph_kind(node.kind).requant(node, self, outs, qz)
        elif len(outs) == 1:
            out = outs[0]
        else:
            raise PrivQuantError(f"node {node.name!r} needs an activation quantizer")
        self.produced[node.name] = out
        return out

    def requant(
        self,
        q: str,
        inputs: list[str],
        qz: ActQuantizer,
        *,
        reals: list | None = None,
        bias=None,
        out: str | None = None,
    ) -> str:
        """Emit the requant op of quantizer ``q`` over ``inputs`` (jointly rescaled to its scale;
        ``reals`` override the inputs' real scales, ``bias`` adds a real per-channel shift) into
        tensor ``out`` (default ``q``)."""
        s_out = float(self.a_scale(q))
        shape = self.info(inputs[0]).shape
        op = requant_op(
            q,
            inputs,
            shape,
            qz,
            s_out,
            [self.real(t) for t in inputs] if reals is None else reals,
            [self.info(t) for t in inputs],
            bias,
            out,
        )
        return self.emit(op, shape, op.attrs["lo"], op.attrs["hi"], s_out, s_out)

    def program(self, model: str) -> Program:
        return Program(model, [self.ops[t] for t in self.order], dict(self.tensors), {})


class QModelContext(LowerContext):
    """Bits, step sizes and integer parameters of a calibrated QModel."""

    def __init__(self, qm: QModel):
        super().__init__(qm.graph, qm.final)
        self.qm = qm

    def w_bits(self, layer):
        return self.qm.w_bits[layer]

    def w_scale(self, layer):
        return self.qm.w_scale(layer).double().numpy()

    def quantizer(self, q):
        return self.qm.quantizers.get(q)

    def a_scale(self, q):
        return float(self.qm.a_scale(q))

    def int_params(self, layer, s_in):
        # same float expressions as QModel.qweight / qbias, so integers match exactly
        return self.qm.int_params(layer, torch.as_tensor(s_in, dtype=torch.float32))


@torch.no_grad()
def lower(qm: QModel) -> Program:
    """Build the integer program from a QModel in quant mode (after calibration / QAT)."""
    ctx = QModelContext(qm)
    for n in qm.graph.nodes:
        ctx.lower_node(n)
    prog = ctx.program(qm.graph.model)
    prog.validate()
    return prog
