"""Capture a float model with torch.fx and normalize it into a QGraph.

Node kinds are the graph kinds of :data:`privquant.ops.GRAPH_KINDS` (each defined in the op
module it lowers to). Normalization: BatchNorm folded into the preceding conv (running
statistics), ReLU/ReLU6 fused into the producing conv/linear/add, Dropout/Identity dropped.
The QGraph then says where activation quantizers sit (the outputs that become ``requant`` ops
in the integer program), from each kind's ``quantized`` policy:

* a conv/linear output is requantized unless every consumer is a residual add (then the add's
  requant rescales it directly) or it is the network output (the logits stay accumulators);
* every add and every average pool output is requantized;
* max pooling, flatten and negation are transparent (they act on already quantized integers).

The bit width of a quantizer is the ``a`` of the conv/linear layers that read it (through
transparent ops); those layers form a *tie group* and must agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from privquant import ops
from privquant.errors import PrivQuantError
from privquant.ops.graph import QNode

__all__ = ["QGraph", "QNode", "capture", "is_layer", "is_transparent"]


def is_layer(node: QNode) -> bool:
    """Has weights (conv/linear): a weight-bit decision variable."""
    return ops.graph_kind(node.kind).layer


def is_transparent(node: QNode) -> bool:
    """Acts on quantized integers and keeps the input's scale (maxpool, flatten, neg)."""
    return ops.graph_kind(node.kind).transparent


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
        return [n for n in self.nodes if is_layer(n)]

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
        while is_transparent(src):
            src = self.node(src.inputs[0])
        if not is_layer(src):
            raise PrivQuantError("the model must end in a linear or conv layer (the logits)")
        return src.name

    def quantized(self) -> list[str]:
        """Names of nodes followed by an activation quantizer (in topological order)."""
        users = self.users()
        final = self.final_layer()
        out = []
        for n in self.nodes:
            policy = ops.graph_kind(n.kind).quantized
            if policy == "always":
                out.append(n.name)
            elif policy == "layer" and n.name != final:
                # a layer whose every user rescales its inputs itself (a residual add) is
                # requantized there, jointly with the other branch
                joint = users[n.name] and all(
                    ops.graph_kind(u.kind).rescales_inputs for u in users[n.name]
                )
                if not joint:
                    out.append(n.name)
        return out

    def readers(self, name: str) -> list[str]:
        """Conv/linear layers reading tensor ``name`` directly or through transparent ops."""
        users = self.users()
        found, stack = [], list(users[name])
        while stack:
            u = stack.pop()
            if is_layer(u):
                found.append(u.name)
            elif is_transparent(u):
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
            if is_layer(u):
                found.append(u.name)
            elif u.name != self.output_node.name:
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
def _fold_bn(conv: nn.Module, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0]).double()
    inv = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = w * inv.reshape(-1, *([1] * (w.dim() - 1)))
    b = (b - bn.running_mean.double()) * inv + bn.bias.detach().double()
    return w.float(), b.float()


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
    """Trace ``model`` (eval mode) and normalize it into a QGraph.

    Normalization rules (generic): Dropout/Identity are dropped, a BatchNorm2d right after a node
    whose kind ``folds_bn`` is folded into its weights, a ReLU/ReLU6 right after a node whose
    kind ``fuses_act`` becomes its ``act``. Every other fx node is offered to the graph kinds of
    :data:`privquant.ops.GRAPH_KINDS` in turn; the first that captures it wins.
    """
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
        if n.op == "call_module" and isinstance(mods[n.target], (nn.Dropout, nn.Identity)):
            alias[n.name] = src(n.args[0])
            continue
        if n.op == "call_module" and isinstance(mods[n.target], nn.BatchNorm2d):
            prev = by_name.get(src(n.args[0]))
            if (
                prev is None
                or not ops.graph_kind(prev.kind).folds_bn
                or prev.act
                or len(n.args[0].users) != 1
            ):
                raise PrivQuantError(f"BatchNorm {n.target!r} does not directly follow a conv")
            prev.weight, prev.bias = _fold_bn(mods[prev.name], mods[n.target])
            alias[n.name] = prev.name
            continue
        act = _act_of(n, mods)
        if act:
            prev = by_name.get(src(n.args[0]))
            if prev is None or not ops.graph_kind(prev.kind).fuses_act or prev.act:
                raise PrivQuantError(
                    f"activation {n.name!r} must directly follow a conv, linear or add"
                )
            if len(n.args[0].users) != 1:
                raise PrivQuantError(f"{prev.name!r} feeds both an activation and another op")
            prev.act = act
            alias[n.name] = prev.name
            continue
        q = None
        for kind in ops.GRAPH_KINDS.values():
            q = kind.capture(n, mods, src)
            if q is not None:
                break
        if q is None:
            what = n.target if n.op != "call_module" else type(mods[n.target]).__name__
            raise PrivQuantError(f"unsupported operation {what!r} (node {n.name!r}) in {name!r}")
        nodes.append(q)
        by_name[q.name] = q
        alias[n.name] = q.name
    g = QGraph(name, tuple(input_shape), nodes)
    g.final_layer()
    return g
