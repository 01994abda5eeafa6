"""Lower a calibrated QModel to the integer program (``privquant.program``).

For a layer with input scale ``s_in`` and per-channel weight scale ``s_w``:
``W_int = clip(round(W / s_w))``, ``bias_int = clip(round(b / (s_in * s_w)), +-bmax)``, and the
accumulator's real value is ``acc * s_in * s_w``. Each activation quantizer becomes one
``requant`` op ``clip(floor((sum_i m_i * x_i + 2^(k-1)) / 2^k), lo, hi)`` whose dyadic multipliers
``m_i / 2^k`` approximate ``s_i / s_out`` (``s_i`` the real scale of input ``i``) with
``p = bits_out + REQUANT_EXTRA_BITS`` significant bits: the approximation error stays below
``2^-REQUANT_EXTRA_BITS`` of an output LSB inside the clip range.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privquant.errors import PrivQuantError
from privquant.program import (
    Op,
    Program,
    TensorInfo,
    conv_out_hw,
    linear_bound,
    pair,
    requant_presum_bounds,
)
from privquant.quant.fakequant import INPUT_SCALE, ActQuantizer, QModel

REQUANT_EXTRA_BITS = 10


def dyadic(
    mults: list[np.ndarray], out_bits: int, max_p: int | None = None
) -> tuple[list[np.ndarray], int]:
    """Integers ``m_i`` and one shift ``k >= 1`` with ``m_i / 2^k ~= mults_i``.

    ``max_p`` caps the multipliers' significant bits so that the pre-sum stays inside the
    runtime's 62-bit rings; it binds only for the wide bit widths of the internal uniform-bits
    ablation (never for 2..8-bit layers), where it trades requantization precision for range.
    """
    per_input = [float(np.max(np.abs(m))) for m in mults]
    mmax = max(per_input)
    if not all(np.isfinite(per_input)) or mmax <= 0:
        raise PrivQuantError("requantization multiplier is zero or not finite")
    p = out_bits + REQUANT_EXTRA_BITS
    # every input keeps p significant bits in its largest (per-channel) multiplier: the inputs of
    # a residual add can differ by 1000x, and a shift chosen for the largest alone would leave
    # the smaller one only a few bits
    k = max(p - 1 - math.floor(math.log2(m)) for m in per_input if m > 0)
    if max_p is not None:
        if max_p < 2:
            raise PrivQuantError("requantization pre-sum would not fit a 62-bit ring")
        k = min(k, max_p - 1 - math.floor(math.log2(mmax)))
    k = max(1, k)
    return [np.round(np.asarray(m, np.float64) * 2.0**k).astype(np.int64) for m in mults], k


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def smallest_signed(a: np.ndarray) -> np.ndarray:
    """``a`` in the smallest signed integer dtype holding all its values (int8 for <= 8 bits)."""
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for dt in (np.int8, np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return a.astype(dt)
    return a.astype(np.int64)


# |pre-sum| < 2^60 keeps it (and its ring, signed) inside the runtime's 62-bit limit
PRESUM_LOG2_LIMIT = 60


def requant_clip(qz: ActQuantizer, s_out: float) -> tuple[int, int]:
    """Output clip range of a requant: the quantizer's grid (ReLU6 also caps at 6)."""
    lo, hi = qz.qmin, qz.qmax
    if qz.relu6:
        hi = min(hi, math.floor(6.0 / s_out + 0.5))
    return lo, hi


def requant_op(
    name: str,
    inputs: list[str],
    shape,
    qz: ActQuantizer,
    s_out: float,
    reals: list,
    infos: list[TensorInfo],
) -> Op:
    """The requant op of quantizer ``qz`` (output scale ``s_out``) over ``inputs`` whose real
    scales are ``reals`` and bounds ``infos``. Shared by :func:`lower` and the search's cost
    table (``quant.costtable``), so both build the same public integers."""
    mults = [np.broadcast_to(r / s_out, (shape[0],)).copy() for r in reals]
    xmax = sum(max(abs(t.lo), abs(t.hi)) for t in infos)
    ints, k = dyadic(mults, qz.bits, PRESUM_LOG2_LIMIT - math.ceil(math.log2(xmax + 1)) - 1)
    lo, hi = requant_clip(qz, s_out)
    arrays = {f"mult{i}": m for i, m in enumerate(ints)}
    arrays["offset"] = _i64(np.full(shape[0], 1 << (k - 1)))
    op = Op(
        "requant",
        name,
        list(inputs),
        name,
        {"shift": k, "lo": lo, "hi": hi, "bits": qz.bits, "signed": qz.signed},
        arrays,
    )
    op.attrs["t_lo"], op.attrs["t_hi"] = requant_presum_bounds(op, infos)
    return op


@torch.no_grad()
def lower(qm: QModel) -> Program:
    """Build the integer program from a QModel in quant mode (after calibration / QAT)."""
    g = qm.graph
    ops: list[Op] = []
    tensors: dict[str, TensorInfo] = {}
    real: dict[str, np.ndarray] = {}  # real scale per tensor (scalar or per channel)
    produced: dict[str, str] = {}  # QNode name -> tensor holding its (possibly quantized) value

    def add_tensor(name, shape, lo, hi, scale=None):
        tensors[name] = TensorInfo(name, tuple(int(s) for s in shape), int(lo), int(hi), scale)

    def requant(node_name: str, inputs: list[str], shape) -> str:
        s_out = float(qm.a_scale(node_name))
        op = requant_op(
            node_name,
            inputs,
            shape,
            qm.quantizers[node_name],
            s_out,
            [real[t] for t in inputs],
            [tensors[t] for t in inputs],
        )
        ops.append(op)
        add_tensor(node_name, shape, op.attrs["lo"], op.attrs["hi"], s_out)
        real[node_name] = np.asarray(s_out)
        return node_name

    for n in g.nodes:
        if n.kind == "input":
            ops.append(Op("input", "input", [], "input", {"bits": 8}))
            add_tensor("input", g.input_shape, 0, 255, INPUT_SCALE)
            real["input"] = np.asarray(INPUT_SCALE)
            produced["input"] = "input"
            continue
        if n.kind == "output":
            src = produced[n.inputs[0]]
            ops.append(Op("output", "output", [src], "logits"))
            t = tensors[src]
            scale = real[src]
            if np.ndim(scale) and np.ptp(scale) > 0:
                raise PrivQuantError("logit layer must have a per-tensor scale")
            add_tensor("logits", t.shape, t.lo, t.hi, float(np.ravel(scale)[0]))
            continue
        ins = [produced[i] for i in n.inputs]
        if n.kind in ("conv", "linear"):
            xin = tensors[ins[0]]
            if xin.scale is None:
                raise PrivQuantError(f"layer {n.name!r} reads an unquantized accumulator")
            wb = qm.w_bits[n.name]
            # same float expressions as QModel.qweight / qbias, so integers match exactly
            w_int, b_int = qm.int_params(n.name, torch.as_tensor(xin.scale, dtype=torch.float32))
            s_acc = (xin.scale * qm.w_scale(n.name).double().numpy()).reshape(-1)
            s_acc = np.broadcast_to(s_acc, (w_int.shape[0],))
            attrs = {"w_bits": wb, "weight_shape": list(w_int.shape)}
            if n.kind == "conv":
                attrs.update(
                    stride=list(pair(n.attrs["stride"])),
                    padding=list(pair(n.attrs["padding"])),
                    groups=int(n.attrs["groups"]),
                )
            op = Op(
                "conv2d" if n.kind == "conv" else "linear",
                n.name,
                ins,
                f"{n.name}:acc",
                attrs,
                {"weight": smallest_signed(w_int.numpy())},
            )
            bmax = linear_bound(op, xin)
            op.arrays["bias"] = _i64(np.clip(b_int.double().numpy(), -bmax, bmax))
            ops.append(op)
            if n.kind == "conv":
                oh, ow = conv_out_hw(
                    *xin.shape[1:], w_int.shape[2:], attrs["stride"], attrs["padding"]
                )
                shape = (w_int.shape[0], oh, ow)
            else:
                shape = (w_int.shape[0],)
            add_tensor(op.output, shape, -2 * bmax, 2 * bmax)
            real[op.output] = s_acc if n.name != qm.final else np.asarray(s_acc[0])
            out = op.output
            if n.name in qm.quantizers:
                out = requant(n.name, [op.output], shape)
        elif n.kind == "add":
            if tensors[ins[0]].shape != tensors[ins[1]].shape:
                raise PrivQuantError(f"add {n.name!r}: shapes differ")
            out = requant(n.name, ins, tensors[ins[0]].shape)
        elif n.kind == "avgpool":
            xin = tensors[ins[0]]
            c, h, wd = xin.shape
            if n.attrs.get("global"):
                kern, stride, pad = (h, wd), (h, wd), (0, 0)
            else:
                kern, stride, pad = (pair(n.attrs[k]) for k in ("kernel", "stride", "padding"))
            window = kern[0] * kern[1]
            oh, ow = conv_out_hw(h, wd, kern, stride, pad)
            sp = Op(
                "sumpool",
                n.name,
                ins,
                f"{n.name}:sum",
                {"kernel": list(kern), "stride": list(stride), "padding": list(pad)},
            )
            ops.append(sp)
            add_tensor(sp.output, (c, oh, ow), window * min(xin.lo, 0), window * max(xin.hi, 0))
            real[sp.output] = np.asarray(real[ins[0]] / window)
            out = requant(n.name, [sp.output], (c, oh, ow))
        elif n.kind == "maxpool":
            xin = tensors[ins[0]]
            c, h, wd = xin.shape
            kern, stride, pad = (pair(n.attrs[k]) for k in ("kernel", "stride", "padding"))
            oh, ow = conv_out_hw(h, wd, kern, stride, pad)
            op = Op(
                "maxpool",
                n.name,
                ins,
                n.name,
                {"kernel": list(kern), "stride": list(stride), "padding": list(pad)},
            )
            ops.append(op)
            add_tensor(n.name, (c, oh, ow), xin.lo, xin.hi, xin.scale)
            real[n.name] = real[ins[0]]
            out = n.name
        elif n.kind == "flatten":
            xin = tensors[ins[0]]
            op = Op("flatten", n.name, ins, n.name)
            ops.append(op)
            add_tensor(n.name, (int(np.prod(xin.shape)),), xin.lo, xin.hi, xin.scale)
            sc = real[ins[0]]
            real[n.name] = sc if np.ndim(sc) == 0 else np.repeat(sc, np.prod(xin.shape[1:]))
            out = n.name
        else:
            raise PrivQuantError(f"cannot lower node kind {n.kind!r}")
        produced[n.name] = out
    prog = Program(g.model, ops, tensors, {})
    prog.validate()
    return prog
