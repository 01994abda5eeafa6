"""Capture a float model with torch.fx and normalize it into a QGraph.

Node kinds are the graph kinds of :data:`privquant.ops.GRAPH_KINDS` (each defined in the op
module it lowers to). Normalization: BatchNorm folded into the preceding conv/linear (running
statistics; otherwise a public affine node), ReLU/ReLU6 fused into the producing node (moved
before a max pool or reshape to get there; otherwise a lookup activation), Dropout/Identity
dropped, a final softmax dropped (noted), ``x.size(0)``/``x.shape[0]`` read as the batch size of
a view/reshape, constants (buffers, numbers) handed to the kinds, and a public affine map folded
into the layer it feeds when that is exact.
The QGraph then says where activation quantizers sit (the outputs that become ``requant`` ops
in the integer program), from each kind's ``quantized`` policy:

* a conv/linear output is requantized unless every consumer is a residual add or a
  concatenation (then that node's requant rescales it directly, unless the layer has a fused
  activation) or it is the network output (the logits stay accumulators);
* every add, concatenation, product, average pool, public affine map and lookup activation
  output is requantized (a lookup activation's table *is* its quantizer);
* max pooling, flatten/reshape and negation are transparent (they act on quantized integers).

The bit width of a quantizer is the ``a`` of the conv/linear layers that read it (through
transparent ops); those layers form a *tie group* and must agree.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from privquant import ops
from privquant.errors import PrivQuantError
from privquant.ops.graph import QNode

__all__ = [
    "QGraph",
    "QNode",
    "capture",
    "is_layer",
    "is_transparent",
    "supported_ops",
    "supported_ops_markdown",
]


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
    #: what capture changed that the user should know (e.g. a final softmax dropped)
    notes: list[str] = field(default_factory=list)

    def node(self, name: str) -> QNode:
        return self._index[name]

    def __post_init__(self):
        self._index = {n.name: n for n in self.nodes}
        self._derived: dict[tuple[str, int], int] = {}

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
            raise PrivQuantError(
                f"the model must end in a linear or conv layer (the logits); it ends in "
                f"{src.name!r} ({src.kind}): a final softmax/log_softmax is dropped, other "
                "final ops are not supported"
            )
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
                # requantized there, jointly with the other branch -- unless it has an
                # activation of its own, which its own requant applies
                joint = (
                    not n.act
                    and users[n.name]
                    and all(ops.graph_kind(u.kind).rescales_inputs for u in users[n.name])
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

    def derived_bits(self, q: str, bits: int) -> int:
        """Bits of quantizer ``q`` that no layer reads, given its downstream layers' ``bits``: the
        most any non-transparent consumer asks for its input (a lookup activation asks for more
        than its output's bits, :meth:`~privquant.ops.graph.GraphKind.input_bits`)."""
        if (q, bits) not in self._derived:
            self._derived[(q, bits)] = self._derived_bits(q, bits)
        return self._derived[(q, bits)]

    def _derived_bits(self, q: str, bits: int) -> int:
        users = self.users()
        asks, stack = [], list(users[q])
        while stack:
            u = stack.pop()
            kind = ops.graph_kind(u.kind)
            if kind.transparent:
                stack.extend(users[u.name])
            else:
                asks.append(kind.input_bits(bits))
        return max(asks, default=bits)

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
#: README rows of what capture itself normalizes (the graph kinds add theirs)
CAPTURE_RULES = (
    ("`nn.BatchNorm2d` / `nn.BatchNorm1d` right after a conv / linear", "folded into its weights"),
    (
        "`nn.ReLU`, `nn.ReLU6`, `F.relu`, `F.relu6`, `x.relu()` after a conv, linear, add, "
        "product or affine map",
        "fused into its requantization (also across a max pool or reshape: `conv -> pool -> relu`)",
    ),
    (
        "`nn.Dropout*`, `F.dropout*`, `nn.Identity`, `x.contiguous()`, `x.clone()`, "
        "`x.detach()`, `x.float()`",
        "dropped (inference)",
    ),
    (
        "a final `softmax` / `log_softmax` (`nn.Softmax`, `F.softmax`, ...)",
        "dropped with a note: the logits are output, argmax unchanged",
    ),
    ("`x.size(0)`, `x.shape[0]`", "the batch size, in view/reshape only"),
)


def _fold_bn(w: torch.Tensor, b: torch.Tensor, bn) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the (float) weight and bias of the layer before it."""
    w = w.detach().double()
    b = b.detach().double()
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
    if n.op == "call_function" and n.target is torch.nn.functional.relu6:
        return "relu6"
    if n.op == "call_method" and n.target == "relu":
        return "relu"
    return None


_DROPOUT_FNS = (
    torch.nn.functional.dropout,
    torch.nn.functional.dropout1d,
    torch.nn.functional.dropout2d,
    torch.nn.functional.alpha_dropout,
)
_IDENTITY_METHODS = ("contiguous", "clone", "detach", "float")


def _is_identity(n: fx.Node, mods) -> bool:
    """Dropout (inference), ``nn.Identity``, ``x.contiguous()`` and friends."""
    if n.op == "call_module":
        return isinstance(mods[n.target], (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity))
    if n.op == "call_function":
        return n.target in _DROPOUT_FNS
    return n.op == "call_method" and n.target in _IDENTITY_METHODS and len(n.args) == 1


_SOFTMAX_FNS = (
    torch.softmax,
    torch.nn.functional.softmax,
    torch.log_softmax,
    torch.nn.functional.log_softmax,
)


def _is_softmax(n: fx.Node, mods) -> bool:
    if n.op == "call_module":
        return isinstance(mods[n.target], (nn.Softmax, nn.LogSoftmax))
    if n.op == "call_function":
        return n.target in _SOFTMAX_FNS
    return n.op == "call_method" and n.target in ("softmax", "log_softmax")


def _softmax_dim(n: fx.Node, mods):
    if n.op == "call_module":
        return mods[n.target].dim
    return n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")


class Sources:
    """What a graph kind's ``capture`` is handed as ``src``: ``src(arg)`` is the QNode name
    producing a tensor argument (a clear error for anything else), plus the capture's view of
    non-tensor arguments -- constants (numbers, buffers), the batch-size symbol -- and of the
    nodes captured so far."""

    def __init__(self, alias, consts, syms, nodes, fx_users):
        self._alias, self._consts, self._syms = alias, consts, syms
        self._nodes, self._fx_users = nodes, fx_users

    def __call__(self, a) -> str:
        if isinstance(a, fx.Node) and a.name in self._alias:
            return self._alias[a.name]
        if isinstance(a, fx.Node) and a.name in self._syms:
            raise PrivQuantError(
                f"{a.name!r} (x.size()/x.shape) is supported only as the batch size of a "
                "view/reshape, e.g. x.view(x.size(0), -1)"
            )
        if isinstance(a, fx.Node) and a.name in self._consts:
            raise PrivQuantError(
                f"constant {a.target!r} is supported only in affine maps with a tensor "
                "(x + c, x * c, (x - mean) / std)"
            )
        raise PrivQuantError(f"unsupported non-tensor argument {a!r} in traced graph")

    def is_tensor(self, a) -> bool:
        return isinstance(a, fx.Node) and a.name in self._alias

    def is_batch(self, a) -> bool:
        """Is ``a`` the batch size (``x.size(0)``, ``x.shape[0]``)?"""
        return isinstance(a, fx.Node) and self._syms.get(a.name) == 0

    def const(self, a):
        """A constant argument as a float or a tensor, else None."""
        if isinstance(a, bool):
            return None
        if isinstance(a, (int, float)):
            return float(a)
        if isinstance(a, fx.Node) and a.name in self._consts:
            return self._consts[a.name]
        return None

    def node(self, name: str) -> QNode | None:
        """The QNode called ``name`` captured so far (None if there is none)."""
        return self._nodes.get(name)

    def sole_user(self, name: str) -> bool:
        """Does the tensor of QNode ``name`` (as last seen in the fx graph) have one user?"""
        return self._fx_users.get(name, 0) == 1


def _commute_target(prev: QNode, by_name: dict, fx_users: dict) -> QNode | None:
    """The node a ReLU after ``prev`` can move to: back through nodes that commute with it
    (max pool, reshapes), each the only user of the one before, to a node that fuses it."""
    chain = prev
    while ops.graph_kind(chain.kind).commutes_with_act and fx_users.get(chain.name) == 1:
        up = by_name.get(chain.inputs[0]) if chain.inputs else None
        if up is None or fx_users.get(up.name) != 1:
            return None
        if ops.graph_kind(up.kind).fuses_act and not up.act:
            return up
        chain = up
    return None


def capture(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> QGraph:
    """Trace ``model`` (eval mode) and normalize it into a QGraph.

    Normalization rules (generic): Dropout/Identity are dropped, a BatchNorm right after a node
    whose kind ``folds_bn`` (and that feeds nothing else) is folded into its weights, a ReLU/ReLU6
    right after a node whose kind ``fuses_act`` becomes its ``act`` (also across nodes that
    ``commute_with_act``: ``conv -> maxpool -> relu`` is ``conv+relu -> maxpool``), a softmax
    producing the output is dropped (a note says so: the logits are output, argmax unchanged).
    Every other fx node is offered to the graph kinds of :data:`privquant.ops.GRAPH_KINDS` in
    turn; the first that captures it wins (a kind may return an existing node to merge into it).
    A public affine node feeding only a layer is folded into it when the layer's kind allows
    (:meth:`~privquant.ops.graph.GraphKind.fold_affine`). Unsupported operations are reported by
    qualified name with their module path and a hint (:mod:`privquant.quant.errors`).
    """
    from privquant.quant.errors import unsupported

    model = model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrivQuantError(
            f"cannot trace model {name!r} with torch.fx: {first} (data-dependent control flow "
            "is not traceable; see the README's supported operations)"
        ) from None
    mods = dict(gm.named_modules())
    nodes: list[QNode] = []
    alias: dict[str, str] = {}  # fx node name -> QNode name producing its value
    by_name: dict[str, QNode] = {}
    consts: dict[str, object] = {}
    syms: dict[str, int | None] = {}  # x.size() / x.shape (None) and their items (index)
    fx_users: dict[str, int] = {}  # QNode name -> users of the fx node last holding its value
    notes: list[str] = []
    src = Sources(alias, consts, syms, by_name, fx_users)

    def bind(n: fx.Node, qname: str) -> None:
        alias[n.name] = qname
        fx_users[qname] = len(n.users)

    for n in gm.graph.nodes:
        if n.op == "get_attr":
            obj = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            consts[n.name] = obj.detach() if isinstance(obj, torch.Tensor) else obj
            continue
        if n.op == "call_method" and n.target == "size" and src.is_tensor(n.args[0]):
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            syms[n.name] = dim
            continue
        if (
            n.op == "call_function"
            and n.target is getattr
            and n.args[1] == "shape"
            and src.is_tensor(n.args[0])
        ):
            syms[n.name] = None
            continue
        if (
            n.op == "call_function"
            and n.target is operator.getitem
            and isinstance(n.args[0], fx.Node)
            and syms.get(n.args[0].name, 0) is None
            and isinstance(n.args[1], int)
        ):
            syms[n.name] = n.args[1]
            continue
        if _is_identity(n, mods):
            bind(n, src(n.args[0]))
            continue
        if n.op == "call_module" and isinstance(mods[n.target], (nn.BatchNorm1d, nn.BatchNorm2d)):
            prev = by_name.get(src(n.args[0]))
            if (
                prev is not None
                and ops.graph_kind(prev.kind).folds_bn
                and not prev.act
                and len(n.args[0].users) == 1
            ):
                prev.weight, prev.bias = _fold_bn(prev.weight, prev.bias, mods[n.target])
                bind(n, prev.name)
                continue
        act = _act_of(n, mods)
        if act:
            prev = by_name.get(src(n.args[0]))
            single = len(n.args[0].users) == 1
            if prev is not None and single and ops.graph_kind(prev.kind).fuses_act and not prev.act:
                prev.act = act
                bind(n, prev.name)
                continue
            target = _commute_target(prev, by_name, fx_users) if prev and single else None
            if target is not None:
                target.act = act
                bind(n, prev.name)
                notes.append(
                    f"{n.name}: {act} moved before {prev.name} (they commute) and fused into "
                    f"{target.name}"
                )
                continue
            # otherwise a standalone activation (a lookup table), offered to the kinds below
        if _is_softmax(n, mods) and [u.op for u in n.users] == ["output"]:
            if _softmax_dim(n, mods) not in (1, -1):
                raise PrivQuantError(f"final softmax {n.name!r} must act on dim 1 (the classes)")
            bind(n, src(n.args[0]))
            notes.append(
                f"final {n.name} dropped: the private output is the logits (argmax and top-k "
                "unchanged); apply softmax to the client's logits if probabilities are needed"
            )
            continue
        q = None
        for kind in ops.GRAPH_KINDS.values():
            q = kind.capture(n, mods, src)
            if q is not None:
                break
        if q is None:
            raise unsupported(n, mods, name)
        if by_name.get(q.name) is q:  # merged into an existing node (e.g. composed maps)
            bind(n, q.name)
            continue
        if q.name in by_name:
            if ops.graph_kind(q.kind).layer:
                raise PrivQuantError(
                    f"layer {q.name!r} is called twice in {name!r}: shared weights are not "
                    "supported (give each call its own module)"
                )
            base, i = n.name, 0  # a weight-free module used twice: name the node by its call
            while q.name in by_name:
                q.name, i = (base if i == 0 else f"{base}_{i}"), i + 1
        if ops.graph_kind(q.kind).layer and q.inputs:
            _fold_input_map(q, by_name, nodes, fx_users)
        nodes.append(q)
        by_name[q.name] = q
        bind(n, q.name)
    g = QGraph(name, tuple(input_shape), nodes, notes)
    g.final_layer()
    return g


def _fold_input_map(layer: QNode, by_name: dict, nodes: list, fx_users: dict) -> None:
    """Fold an act-free public map read only by ``layer`` into its weights (if its kind can)."""
    m = by_name.get(layer.inputs[0])
    if m is None or m.act or fx_users.get(m.name) != 1:
        return
    amap = ops.graph_kind(m.kind).affine_map(m)
    if amap is None or not ops.graph_kind(layer.kind).fold_affine(layer, *amap):
        return
    layer.inputs = list(m.inputs)
    nodes.remove(m)
    del by_name[m.name]


def supported_ops() -> list[tuple[str, str]]:
    """(PyTorch spelling, what it becomes) for every supported operation: capture's own rules
    and each graph kind's ``supported`` rows, in table order."""
    rows = [row for g in ops.GRAPH_KINDS.values() for row in g.supported]
    return rows + list(CAPTURE_RULES)


def supported_ops_markdown() -> str:
    """The README's supported-ops table (a test keeps README.md equal to it)."""
    lines = ["| PyTorch | becomes |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in supported_ops()]
    return "\n".join(lines) + "\n"
