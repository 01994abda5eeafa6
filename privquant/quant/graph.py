"""Capture a float model with torch.fx and normalize it into a QGraph.

Normalization: BatchNorm folded into the preceding conv (running statistics), ReLU/ReLU6 fused
into the producing conv/linear/add, Dropout/Identity dropped. The QGraph then says where
activation quantizers sit (the outputs that become ``requant`` ops in the integer program):

* a conv/linear output is requantized unless every consumer is a residual add (then the add's
  requant rescales it directly) or it is the network output (the logits stay accumulators);
* every add and every average pool output is requantized;
* max pooling and flatten are transparent (they act on already quantized integers).

The bit width of a quantizer is the ``a`` of the conv/linear layers that read it (through
transparent ops); those layers form a *tie group* and must agree.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from privquant.errors import PrivQuantError

LAYER_KINDS = ("conv", "linear")
TRANSPARENT_KINDS = ("maxpool", "flatten")


@dataclass
class QNode:
    """One normalized node. ``weight``/``bias`` hold BN-folded float parameters for layers."""

    name: str
    kind: str  # input | conv | linear | add | avgpool | maxpool | flatten | output
    inputs: list[str]
    act: str | None = None  # None | "relu" | "relu6"
    attrs: dict = field(default_factory=dict)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


@dataclass
class QGraph:
    model: str
    input_shape: tuple[int, ...]
    nodes: list[QNode]

    def node(self, name: str) -> QNode:
        return self._index[name]

    def __post_init__(self):
        self._index = {n.name: n for n in self.nodes}

    @property
    def layers(self) -> list[QNode]:
        return [n for n in self.nodes if n.kind in LAYER_KINDS]

    @property
    def layer_names(self) -> list[str]:
        return [n.name for n in self.layers]

    @property
    def output_node(self) -> QNode:
        return next(n for n in self.nodes if n.kind == "output")

    def users(self) -> dict[str, list[QNode]]:
        out: dict[str, list[QNode]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n)
        return out

    def final_layer(self) -> str:
        """The conv/linear node whose accumulator is the network output (logits)."""
        src = self.node(self.output_node.inputs[0])
        while src.kind in TRANSPARENT_KINDS:
            src = self.node(src.inputs[0])
        if src.kind not in LAYER_KINDS:
            raise PrivQuantError("the model must end in a linear or conv layer (the logits)")
        return src.name

    def quantized(self) -> list[str]:
        """Names of nodes followed by an activation quantizer (in topological order)."""
        users = self.users()
        final = self.final_layer()
        out = []
        for n in self.nodes:
            if n.kind in ("add", "avgpool"):
                out.append(n.name)
            elif n.kind in LAYER_KINDS and n.name != final:
                only_adds = users[n.name] and all(u.kind == "add" for u in users[n.name])
                if not only_adds:
                    out.append(n.name)
        return out

    def readers(self, name: str) -> list[str]:
        """Conv/linear layers reading tensor ``name`` directly or through transparent ops."""
        users = self.users()
        found, stack = [], list(users[name])
        while stack:
            u = stack.pop()
            if u.kind in LAYER_KINDS:
                found.append(u.name)
            elif u.kind in TRANSPARENT_KINDS:
                stack.extend(users[u.name])
        return sorted(set(found))

    def downstream_layers(self, name: str) -> list[str]:
        """Nearest conv/linear layers reachable through any non-layer ops (for bit inheritance)."""
        users = self.users()
        found, stack, seen = [], list(users[name]), set()
        while stack:
            u = stack.pop()
            if u.name in seen:
                continue
            seen.add(u.name)
            if u.kind in LAYER_KINDS:
                found.append(u.name)
            elif u.kind != "output":
                stack.extend(users[u.name])
        return sorted(set(found))

    def tie_groups(self) -> list[list[str]]:
        """Groups of layers that read one quantizer and so must share activation bits."""
        groups = []
        for q in self.quantized():
            r = self.readers(q)
            if len(r) > 1:
                groups.append(r)
        return groups

    def first_layers(self) -> list[str]:
        """Layers reading the 8-bit network input (their ``a`` is fixed to 8)."""
        return self.readers(next(n.name for n in self.nodes if n.kind == "input"))


# ---------------------------------------------------------------------- capture
def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0]).double()
    inv = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = w * inv.reshape(-1, 1, 1, 1)
    b = (b - bn.running_mean.double()) * inv + bn.bias.detach().double()
    return w.float(), b.float()


def _is_add(n: fx.Node) -> bool:
    return (n.op == "call_function" and n.target in (operator.add, torch.add)) or (
        n.op == "call_method" and n.target == "add"
    )


def _is_flatten(n: fx.Node, mods) -> bool:
    if n.op == "call_module" and isinstance(mods[n.target], nn.Flatten):
        return True
    if n.op == "call_function" and n.target is torch.flatten:
        return True
    return n.op == "call_method" and n.target == "flatten"


def _act_of(n: fx.Node, mods) -> str | None:
    if n.op == "call_module":
        m = mods[n.target]
        if isinstance(m, nn.ReLU6):
            return "relu6"
        if isinstance(m, nn.ReLU):
            return "relu"
    if n.op == "call_function" and n.target in (torch.relu, torch.nn.functional.relu):
        return "relu"
    if n.op == "call_method" and n.target == "relu":
        return "relu"
    return None


def capture(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> QGraph:
    """Trace ``model`` (eval mode) and normalize it into a QGraph."""
    model = model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise PrivQuantError(f"cannot trace model {name!r} with torch.fx: {e}") from None
    mods = dict(gm.named_modules())
    nodes: list[QNode] = []
    alias: dict[str, str] = {}  # fx node name -> QNode name producing its value
    by_name: dict[str, QNode] = {}

    def src(a) -> str:
        if not isinstance(a, fx.Node):
            raise PrivQuantError(f"unsupported non-tensor argument {a!r} in traced graph")
        return alias[a.name]

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            q = QNode("input", "input", [])
        elif n.op == "output":
            q = QNode("output", "output", [src(n.args[0])])
        elif n.op == "call_module" and isinstance(mods[n.target], (nn.Dropout, nn.Identity)):
            alias[n.name] = src(n.args[0])
            continue
        elif n.op == "call_module" and isinstance(mods[n.target], nn.Conv2d):
            m = mods[n.target]
            if m.padding_mode != "zeros" or isinstance(m.padding, str) or m.dilation != (1, 1):
                raise PrivQuantError(f"conv {n.target!r}: only zero padding, no dilation supported")
            b = m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_channels)
            q = QNode(
                n.target,
                "conv",
                [src(n.args[0])],
                weight=m.weight.detach().float(),
                bias=b,
                attrs={"stride": list(m.stride), "padding": list(m.padding), "groups": m.groups},
            )
        elif n.op == "call_module" and isinstance(mods[n.target], nn.BatchNorm2d):
            prev = by_name.get(src(n.args[0]))
            if prev is None or prev.kind != "conv" or prev.act or len(n.args[0].users) != 1:
                raise PrivQuantError(f"BatchNorm {n.target!r} does not directly follow a conv")
            conv_mod = mods[prev.name]
            prev.weight, prev.bias = _fold_bn(conv_mod, mods[n.target])
            alias[n.name] = prev.name
            continue
        elif n.op == "call_module" and isinstance(mods[n.target], nn.Linear):
            m = mods[n.target]
            b = m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_features)
            q = QNode(
                n.target, "linear", [src(n.args[0])], weight=m.weight.detach().float(), bias=b
            )
        elif _act_of(n, mods):
            prev = by_name.get(src(n.args[0]))
            if prev is None or prev.kind not in ("conv", "linear", "add") or prev.act:
                raise PrivQuantError(
                    f"activation {n.name!r} must directly follow a conv, linear or add"
                )
            if len(n.args[0].users) != 1:
                raise PrivQuantError(f"{prev.name!r} feeds both an activation and another op")
            prev.act = _act_of(n, mods)
            alias[n.name] = prev.name
            continue
        elif _is_add(n):
            q = QNode(n.name, "add", [src(n.args[0]), src(n.args[1])])
        elif _is_flatten(n, mods):
            q = QNode(n.name, "flatten", [src(n.args[0])])
        elif n.op == "call_module" and isinstance(mods[n.target], nn.AdaptiveAvgPool2d):
            osz = mods[n.target].output_size
            if osz not in (1, (1, 1)):
                raise PrivQuantError(f"{n.target!r}: only AdaptiveAvgPool2d(1) is supported")
            q = QNode(n.target, "avgpool", [src(n.args[0])], attrs={"global": True})
        elif n.op == "call_module" and isinstance(mods[n.target], nn.AvgPool2d):
            m = mods[n.target]
            pad = m.padding if isinstance(m.padding, int) else max(m.padding)
            if pad and not m.count_include_pad:
                raise PrivQuantError(f"{n.target!r}: count_include_pad=False is not supported")
            if m.ceil_mode or m.divisor_override:
                raise PrivQuantError(f"{n.target!r}: ceil_mode/divisor_override not supported")
            q = QNode(
                n.target,
                "avgpool",
                [src(n.args[0])],
                attrs={
                    "kernel": m.kernel_size,
                    "stride": m.stride or m.kernel_size,
                    "padding": m.padding,
                },
            )
        elif n.op == "call_module" and isinstance(mods[n.target], nn.MaxPool2d):
            m = mods[n.target]
            if m.ceil_mode or m.dilation not in (1, (1, 1)):
                raise PrivQuantError(f"{n.target!r}: ceil_mode/dilation not supported")
            q = QNode(
                n.target,
                "maxpool",
                [src(n.args[0])],
                attrs={
                    "kernel": m.kernel_size,
                    "stride": m.stride or m.kernel_size,
                    "padding": m.padding,
                },
            )
        else:
            what = n.target if n.op != "call_module" else type(mods[n.target]).__name__
            raise PrivQuantError(f"unsupported operation {what!r} (node {n.name!r}) in {name!r}")
        nodes.append(q)
        by_name[q.name] = q
        alias[n.name] = q.name
    g = QGraph(name, tuple(input_shape), nodes)
    g.final_layer()
    return g
