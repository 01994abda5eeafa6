"""Fake-quantized execution of a QGraph (QAT and PTQ), mirroring the integer program.

Quantizers (LSQ, Esser et al. 2020: learned step size, straight-through rounding):

* weights: signed symmetric per output channel, ``q in [-(2^(b-1)-1), 2^(b-1)-1]``; the final
  (logit) layer uses one per-tensor scale so that argmax over integer logits is exact;
* biases: rounded to the accumulator grid ``s_in * s_w`` (what the integer program stores);
* activations: at every quantizer point of the QGraph, unsigned ``[0, 2^b-1]`` after ReLU/ReLU6
  (ReLU6 additionally caps at 6), signed ``[-2^(b-1), 2^(b-1)-1]`` otherwise;
* the network input is ``uint8 / 255``: already on its 8-bit grid, never rescaled.

``QModel(mode="float")`` runs the same graph without quantization (FP32 reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from privquant import ops
from privquant.errors import PrivQuantError
from privquant.ops.input_ import INPUT_SCALE as INPUT_SCALE
from privquant.quant.graph import QGraph, QNode
from privquant.quant.spec import BitAssignment


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class _GradScale(torch.autograd.Function):
    """Identity in the forward pass (bit-exact), gradient times ``g`` in the backward pass."""

    @staticmethod
    def forward(ctx, s, g):
        ctx.g = g
        return s.view_as(s)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


def grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    return _GradScale.apply(s, g)


def lsq(x: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Fake-quantize ``x`` with step ``s`` (broadcastable) to integers in [qmin, qmax]."""
    g = 1.0 / max(1.0, (x.numel() * max(abs(qmin), qmax)) ** 0.5)
    s = grad_scale(s, g)
    return torch.clamp(round_ste(x / s), qmin, qmax) * s


def weight_qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


@dataclass
class ActQuantizer:
    """An activation quantizer's integer range: ``signed`` ``[-2^(b-1), 2^(b-1) - 1]``, unsigned
    ``[0, 2^b - 1]``, or ``dip`` (mostly non-negative with a small negative tail, e.g. GELU or
    SiLU: 1/16 of the codes below zero, ``[-max(1, 2^b / 16), ...]``, still ``2^b`` codes)."""

    node: str
    bits: int
    signed: bool
    relu6: bool
    dip: bool = False

    @property
    def qmin(self) -> int:
        if self.dip and not self.signed:
            return -max(1, (1 << self.bits) >> 4)
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        if self.dip and not self.signed:
            return (1 << self.bits) - 1 + self.qmin
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


def _clip(qz: ActQuantizer, s) -> tuple[int, int]:
    from privquant.quant.lower import requant_clip

    return requant_clip(qz, float(s.detach()) if isinstance(s, torch.Tensor) else float(s))


def _key(name: str) -> str:
    return name.replace(".", "__")


class QModel(nn.Module):
    """Executable fake-quant model for one QGraph and bit assignment."""

    def __init__(self, graph: QGraph, bits: BitAssignment):
        super().__init__()
        self.graph = graph
        graph_layers = graph.layer_names
        bits.check_layers(graph_layers)
        self.final = graph.final_layer()
        self.w_bits = {n: bits.get(n).w for n in graph_layers}
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        self.w_scales = nn.ParameterDict()
        for n in graph.layers:
            self.weights[_key(n.name)] = nn.Parameter(n.weight.clone())
            self.biases[_key(n.name)] = nn.Parameter(n.bias.clone())
            ch = 1 if n.name == self.final else n.weight.shape[0]
            self.w_scales[_key(n.name)] = nn.Parameter(torch.ones(ch))
        self.quantizers = self._make_quantizers(bits)
        self.a_scales = nn.ParameterDict(
            {_key(q): nn.Parameter(torch.ones(())) for q in self.quantizers}
        )
        self.mode = "float"

    # ------------------------------------------------------------------ quantizer layout
    def _make_quantizers(self, bits: BitAssignment) -> dict[str, ActQuantizer]:
        g = self.graph
        signed: dict[str, bool] = {}
        for n in g.nodes:
            kind = ops.graph_kind(n.kind)
            signed[n.name] = not n.act and kind.signed(n, [signed[i] for i in n.inputs])
        out = {}
        for q in g.quantized():
            readers = g.readers(q)
            if readers:
                a = {bits.get(r).a for r in readers}
                if len(a) > 1:
                    raise PrivQuantError(
                        f"layers {readers} read one activation quantizer but are assigned "
                        f"different activation bits {sorted(a)}; tie them"
                    )
                b = a.pop()
            else:
                down = g.downstream_layers(q)
                b = g.derived_bits(q, max((bits.get(r).a for r in down), default=8))
            node = g.node(q)
            dip = not node.act and ops.graph_kind(node.kind).dip(node)
            out[q] = ActQuantizer(q, b, signed[q], node.act == "relu6", dip)
        return out

    def layer(self, name: str) -> QNode:
        return self.graph.node(name)

    # ------------------------------------------------------------------ parameters
    def w_scale(self, name: str) -> torch.Tensor:
        return self.w_scales[_key(name)].abs() + 1e-12

    def a_scale(self, name: str) -> torch.Tensor:
        return self.a_scales[_key(name)].abs() + 1e-12

    def qweight(self, name: str) -> torch.Tensor:
        w = self.weights[_key(name)]
        s = self.w_scale(name).reshape(-1, *([1] * (w.dim() - 1)))
        qmax = weight_qmax(self.w_bits[name])
        return lsq(w, s, -qmax, qmax)

    def qbias(self, name: str, s_in: torch.Tensor, x_abs: int | None = None) -> torch.Tensor:
        """The bias on the accumulator grid ``s_in * s_w``; with ``x_abs`` (the largest |integer|
        of the layer's input) clipped to ``+-K * wmax * x_abs`` as the integer program clips it
        (``privquant.program.linear_bound``)."""
        s = s_in * self.w_scale(name)
        q = round_ste(self.biases[_key(name)] / s)
        if x_abs is not None:
            w = self.weights[_key(name)]
            bmax = float(w[0].numel() * weight_qmax(self.w_bits[name]) * x_abs)
            q = torch.clamp(q, -bmax, bmax)
        return q * s

    @torch.no_grad()
    def int_params(self, name: str, s_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer weight and bias of a layer, by the same float ops as :meth:`qweight`/`qbias`."""
        w = self.weights[_key(name)]
        s = self.w_scale(name).reshape(-1, *([1] * (w.dim() - 1)))
        qmax = weight_qmax(self.w_bits[name])
        w_int = torch.clamp(torch.round(w / s), -qmax, qmax)
        b_int = torch.round(self.biases[_key(name)] / (s_in * self.w_scale(name)))
        return w_int.to(torch.int64), b_int.to(torch.int64)

    # ------------------------------------------------------------------ execution
    def forward(
        self,
        x: torch.Tensor,
        record: dict | None = None,
        stop_at: str | None = None,
        on_quantizer=None,
    ) -> torch.Tensor:
        """Logits for float input ``x`` (uint8 / 255).

        ``record`` receives the integer value of every quantized tensor; ``stop_at`` returns the
        named node's value before its quantizer; ``on_quantizer(name, value)`` is called with each
        quantizer's input just before it applies (calibration sets the step size there, so every
        quantizer sees already-quantized upstream values in one pass).
        """
        quant = self.mode == "quant"
        env: dict[str, torch.Tensor] = {}
        scale: dict[str, torch.Tensor] = {}
        x_abs: dict[str, int] = {}  # largest |integer| of each quantized tensor (its bounds)
        for n in self.graph.nodes:
            kind = ops.graph_kind(n.kind)
            xs = [env[i] for i in n.inputs] if n.inputs else [x]
            if n.kind == "output":
                return kind.forward(n, xs)
            params = None
            if kind.layer:
                params = self.weights[_key(n.name)], self.biases[_key(n.name)]
                if quant:
                    if n.inputs[0] not in scale:
                        raise PrivQuantError(f"layer {n.name!r} reads an unquantized tensor")
                    params = (
                        self.qweight(n.name),
                        self.qbias(n.name, scale[n.inputs[0]], x_abs.get(n.inputs[0])),
                    )
            y = kind.forward(n, xs, params)
            if n.act == "relu":
                y = F.relu(y)
            elif n.act == "relu6":
                y = F.relu6(y)
            if not n.inputs:  # the network input: uint8 / 255, already on its grid
                scale[n.name] = torch.tensor(INPUT_SCALE)
                x_abs[n.name] = 255
            elif kind.transparent and n.inputs[0] in scale:
                scale[n.name] = scale[n.inputs[0]]
                if n.inputs[0] in x_abs:
                    x_abs[n.name] = x_abs[n.inputs[0]]
            if n.name == stop_at:
                return y
            if quant and n.name in self.quantizers:
                if on_quantizer is not None:
                    on_quantizer(n.name, y)
                qz = self.quantizers[n.name]
                s = self.a_scale(n.name)
                y = lsq(y, s, qz.qmin, qz.qmax)
                y = kind.fake_quant(n, xs, y, [scale.get(i) for i in n.inputs], s, qz)
                scale[n.name] = s
                x_abs[n.name] = max(abs(v) for v in _clip(qz, s))
            env[n.name] = y
            if record is not None and n.name in scale:
                record[n.name] = (y.detach() / scale[n.name].detach()).round().to(torch.int64)
        raise PrivQuantError("graph has no output node")
