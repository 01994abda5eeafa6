"""The float-graph facet of an op kind: capture, fake-quant execution, lowering, CrypTen baseline.

``privquant.quant`` turns an ``nn.Module`` into a QGraph of *graph nodes* (conv, linear, add,
avgpool, maxpool, flatten, neg, ...), runs it in float or fake-quant mode, and lowers it to the
integer program. Each graph node kind is a :class:`GraphKind` defined in the op module it lowers
to (``privquant/ops/conv2d.py`` holds the ``conv`` graph kind, ``requant.py`` the residual
``add``, ``sumpool.py`` the ``avgpool``), so one module describes an op end to end. The quant
modules dispatch through :data:`privquant.ops.GRAPH_KINDS`; nothing branches on kind strings.

What a graph kind declares:

* ``layer``: has weights (conv/linear): one weight-bit decision variable of the search;
* ``transparent``: acts on already quantized integers and keeps its input's scale (maxpool,
  flatten, neg): never followed by a quantizer, traversed when finding a quantizer's readers;
* ``quantized``: ``"always"`` (add, avgpool: their output is requantized), ``"layer"`` (conv/linear:
  unless every user is a residual add, or it produces the logits), ``"never"``;
* ``fuses_act``: an activation (ReLU/ReLU6) right after it is fused into it;
* ``commutes_with_act``: a ReLU/ReLU6 right after it may be moved before it (max pooling and
  reshapes commute with monotone elementwise functions), so that it fuses into the producer;
* :meth:`capture` (from a torch.fx node), :meth:`forward` (float / fake-quant),
  :meth:`lower` (integer ops into a lowering context), :meth:`crypten` (the CrypTen-native
  baseline on MPCTensors);
* :meth:`requant`: how the node's activation quantizer becomes integer ops (default: one
  ``requant`` op over the tensors :meth:`lower` returned; a lookup table owns its quantizer, a
  concatenation requantizes each input, a public affine map adds its bias);
* :meth:`fake_quant`: the node's quantized value in fake-quant mode (default: the LSQ
  quantizer's output; a lookup table returns its table's value so both agree exactly);
* :meth:`input_bits` / :meth:`dip`: a lookup activation asks for a finer input quantizer than
  its output's bits and keeps a few negative codes for functions with a small negative dip;
* :meth:`fold_affine` / :meth:`affine_map`: a layer absorbs a public per-channel affine map of
  its input into its weights (used to fold input normalization into the first layer when that
  is exact);
* ``supported``: the PyTorch spellings it captures, for the README's supported-ops table
  (:func:`privquant.ops.supported_ops`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from privquant.errors import PrivQuantError


@dataclass
class QNode:
    """One normalized float-graph node. ``weight``/``bias`` hold BN-folded float parameters of
    layers; ``act`` is a fused activation (None, ``"relu"`` or ``"relu6"``)."""

    name: str
    kind: str
    inputs: list[str]
    act: str | None = None
    attrs: dict = field(default_factory=dict)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class GraphKind:
    """Base class of a float-graph node kind (see the module docstring)."""

    name: ClassVar[str] = ""
    layer: ClassVar[bool] = False
    transparent: ClassVar[bool] = False
    quantized: ClassVar[str] = "never"  # "always" | "layer" | "never"
    fuses_act: ClassVar[bool] = False
    folds_bn: ClassVar[bool] = False  # a BatchNorm right after it is folded into its weights
    #: requantizes all its inputs jointly (a residual add): a layer feeding only such nodes gets
    #: no quantizer of its own
    rescales_inputs: ClassVar[bool] = False
    #: a ReLU/ReLU6 right after it may move before it (it commutes with monotone functions)
    commutes_with_act: ClassVar[bool] = False
    #: README rows: (PyTorch spelling, what it becomes / conditions)
    supported: ClassVar[tuple[tuple[str, str], ...]] = ()

    # ------------------------------------------------------------------ capture
    def capture(self, n, mods: dict, src) -> Any:
        """A :class:`privquant.quant.graph.QNode` for fx node ``n`` if this kind handles it, else
        None. ``src(arg)`` maps an fx argument to the QNode name producing it (raising a clear
        error for non-tensor arguments); ``mods`` are the traced module's named modules."""
        return None

    def signed(self, node, inputs_signed: list[bool]) -> bool:
        """Is the node's output signed before any fused activation? (default: yes; transparent
        kinds keep their input's sign)."""
        return inputs_signed[0] if self.transparent else True

    # ------------------------------------------------------------------ execution
    def forward(self, node, xs: list, params=None):
        """Output of ``node`` on input tensors ``xs`` (float or fake-quant: the caller passes the
        weight and bias to use, float or fake-quantized, as ``params`` for layers)."""
        raise NotImplementedError

    def lower(self, node, ctx) -> list[str]:
        """Emit the node's integer ops into ``ctx`` (:class:`privquant.quant.lower.LowerContext`)
        and return the tensors its activation quantizer (if any) requantizes jointly: one tensor
        for most kinds, both branches for a residual add."""
        raise NotImplementedError

    def requant(self, node, ctx, outs: list[str], qz) -> str:
        """Emit the node's activation quantizer ``qz`` over ``outs`` (what :meth:`lower`
        returned) into ``ctx`` and return the quantized tensor. Default: one ``requant`` op that
        rescales all of ``outs`` jointly to the quantizer's scale."""
        return ctx.requant(node.name, outs, qz)

    def fake_quant(self, node, xs: list, yq, in_scales: list, s_out, qz):
        """The node's quantized output in fake-quant mode, given its inputs ``xs`` (their scales
        ``in_scales``, None for unquantized ones) and ``yq``, the LSQ quantizer's output with step
        ``s_out``. Default: ``yq``."""
        return yq

    def input_bits(self, bits: int) -> int:
        """Bits this kind wants for an input quantizer that no layer reads, when the layers
        downstream take ``bits``-bit activations (default: ``bits``)."""
        return bits

    def dip(self, node) -> bool:
        """Is the (unsigned) output mostly non-negative with a small negative tail? Its quantizer
        then keeps 1/16 of its codes below zero
        (:class:`privquant.quant.fakequant.ActQuantizer`)."""
        return False

    def fold_affine(self, node, scale, shift, axis) -> bool:
        """Absorb ``x -> x * scale[c] + shift[c]`` (per input channel: float64 arrays of one or
        C entries; ``axis`` as :meth:`affine_map` gives it) applied to the node's input into its
        weights, if that is exact; return whether it did."""
        return False

    def affine_map(self, node):
        """``(scale, shift, axis)`` if the node is a public per-channel affine map of its input
        (``axis``: the constants' axis counted from the last, None if scalar-like), else None."""
        return None

    def crypten(self, node: dict, ins: list, ctx):
        """The node on CrypTen MPCTensors (``ctx``: crypten module, rank, server weights)."""
        raise PrivQuantError(f"CrypTen-native baseline: unsupported node kind {self.name!r}")
