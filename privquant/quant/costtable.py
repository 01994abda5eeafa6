"""Communication cost table for the mixed-precision search, from the protocols' own ``cost()``.

Why the table is not keyed by ``(layer, b_w, b_a)`` alone
--------------------------------------------------------
The cost of a layer's protocols depends on ring widths, and a ring width depends on more than the
layer's own bits (``privquant.program.ring_bits``): the accumulator ring of a conv is the pre-sum
ring of the requant that reads it, which depends on the conv's ``b_w``, on its input bits and on
the bits of the activation it produces (the dyadic multiplier's bits follow ``bits_out``, the
scales and an error budget, ``quant.lower.dyadic``); a residual add's requant depends on both
branches; and a requant emits its output directly into the ring of the layers that read it
(``ell_out``), so its offline traffic depends on the *next* layers' bits too. The table is
therefore keyed by exactly what each op's signature depends on:

* decision variables: ``w:<layer>`` (weight bits of every conv/linear) and ``a:<quantizer>``
  (bits of every activation quantizer that some layer reads; layers reading one quantizer share its
  variable, so the tie groups of :meth:`QGraph.tie_groups` hold by construction; a quantizer no
  layer reads, e.g. a residual add before global pooling, takes the max of its downstream layers'
  ``a`` exactly like ``QModel``);
* a :class:`Term` per op of the integer program: its cost for every configuration of the variables
  its signature depends on (found by recording which variables the symbolic lowering reads), and,
  when one ring it needs depends on a larger neighbourhood, for every possible value of that ring;
* a :class:`Ring` per such ring: ``ring = max(atoms)``, each atom (a tensor's own width, a
  requant's pre-sum width, a max-pool's difference width) a function of a few variables, exactly
  as :func:`privquant.program.ring_bits` computes it.

Scales. Multipliers, shifts and pre-sum bounds also depend on the step sizes, which calibration
picks per bit width. The table freezes them (a :class:`ScaleBook`): weight scales per
``(layer, b_w)`` are exactly what ``calibrate`` picks (they depend on the weights only);
activation scales per ``(quantizer, b)`` are those ``calibrate`` picks for the uniform ``wBaB``
model. With these scales the table is exact: :meth:`CostTable.evaluate` equals the sum of
``op_cost`` over the program ``lower`` builds from a QModel holding the same scales
(:func:`frozen_qmodel`), per scope and in total, for every assignment -- and so the cost a real
run measures (tests). For uniform ``wBaB`` assignments this is also exactly what
``privquant.quantize`` builds; for mixed ones ``calibrate`` sees differently quantized upstream
values and may pick slightly different scales, so the search always re-lowers its final choice
through ``quantize`` and reports that exact cost (``quant.search``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from privquant import ops
from privquant.costs import FIELDS, HE_KEYS_SCOPE, SEEDS_SCOPE, provider_setup_cost
from privquant.costs import program_cost as program_cost
from privquant.errors import PrivQuantError
from privquant.program import Op, Program, TensorInfo, ring_atoms, signed_bits
from privquant.protocols.primitives.cost import ZERO, Cost
from privquant.quant.calibrate import calibrate
from privquant.quant.fakequant import ActQuantizer, QModel, _key
from privquant.quant.graph import QGraph, is_transparent
from privquant.quant.lower import LowerContext, lower, requant_clip
from privquant.quant.spec import BitAssignment, LayerBits

DEFAULT_WBITS = (2, 3, 4, 6, 8)
DEFAULT_ABITS = (2, 3, 4, 6, 8)
MAX_FACTOR_CONFIGS = 5**5  # a term folds a ring into its own key while it stays this small
IMPOSSIBLE = -1  # cost entry of a (configuration, ring) pair that cannot occur


def cost_array(c: Cost) -> np.ndarray:
    return np.array([getattr(c, f) for f in FIELDS], dtype=np.int64)


def as_cost(a) -> Cost:
    return Cost(*(int(v) for v in a))


# ---------------------------------------------------------------------- decision variables
def wvar(layer: str) -> str:
    return f"w:{layer}"


def avar(quantizer: str) -> str:
    return f"a:{quantizer}"


class BitVars:
    """The decision variables of a graph and their mapping to/from a :class:`BitAssignment`."""

    def __init__(self, graph: QGraph):
        self.graph = graph
        self.layers = graph.layer_names
        quantized = graph.quantized()
        qset = set(quantized)
        self.src = {n: self._source(n, qset) for n in self.layers}
        self.free = [q for q in quantized if graph.readers(q)]
        self.derived = {
            q: sorted({self.src[r] for r in graph.downstream_layers(q)} - {"input"})
            for q in quantized
            if not graph.readers(q)
        }
        self.names = [wvar(n) for n in self.layers] + [avar(q) for q in self.free]

    def _source(self, layer: str, qset: set[str]) -> str:
        node = self.graph.node(self.graph.node(layer).inputs[0])
        while is_transparent(node):
            node = self.graph.node(node.inputs[0])
        if node.kind == "input":
            return "input"
        if node.name not in qset:
            raise PrivQuantError(f"layer {layer!r} reads an unquantized tensor {node.name!r}")
        return node.name

    def tie_groups(self) -> list[list[str]]:
        """Layers sharing one activation variable (equal to ``QGraph.tie_groups``)."""
        groups: dict[str, list[str]] = {}
        for n in self.layers:
            groups.setdefault(self.src[n], []).append(n)
        return [sorted(v) for k, v in groups.items() if k != "input" and len(v) > 1]

    def quantizer_bits(self, values: dict[str, int], q: str) -> int:
        if q in self.derived:
            b = max((values[avar(s)] for s in self.derived[q]), default=8)
            return self.graph.derived_bits(q, b)
        return values[avar(q)]

    def assignment(self, values: dict[str, int], model: str | None = None) -> BitAssignment:
        layers = {}
        for n in self.layers:
            a = 8 if self.src[n] == "input" else values[avar(self.src[n])]
            layers[n] = LayerBits(int(values[wvar(n)]), int(a))
        return BitAssignment(layers=layers, model=model)

    def values(self, bits: BitAssignment) -> dict[str, int]:
        bits.check_layers(self.layers)
        out = {wvar(n): bits.get(n).w for n in self.layers}
        for q in self.free:
            a = {bits.get(r).a for r in self.graph.readers(q)}
            if len(a) > 1:
                raise PrivQuantError(
                    f"layers {self.graph.readers(q)} read one activation quantizer but are "
                    f"assigned different activation bits {sorted(a)}"
                )
            out[avar(q)] = a.pop()
        return out


# ---------------------------------------------------------------------- frozen scales
@dataclass
class ScaleBook:
    """Step sizes per bit width: ``w[(layer, b)]`` and ``a[(quantizer, b)]`` (raw parameters),
    plus a template program (structure and shapes; every bit-dependent field is recomputed)."""

    w: dict[tuple[str, int], torch.Tensor]
    a: dict[tuple[str, int], torch.Tensor]
    template: Program
    bits: tuple[int, ...]
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def w_scale(self, layer: str, b: int) -> np.ndarray:
        key = ("w", layer, b)
        if key not in self._memo:  # the same float ops as QModel.w_scale, once
            self._memo[key] = (self.w[(layer, b)].abs() + 1e-12).double().numpy()
        return self._memo[key]

    def a_scale(self, q: str, b: int) -> float:
        key = ("a", q, b)
        if key not in self._memo:  # == float(QModel.a_scale), once
            self._memo[key] = float(self.a[(q, b)].abs() + 1e-12)
        return self._memo[key]


def frozen_scales(graph: QGraph, calib: torch.Tensor, bits: Iterable[int]) -> ScaleBook:
    """Calibrate the uniform ``wBaB`` model for every ``B`` in ``bits`` (``calibrate``, PTQ)."""
    bits = tuple(sorted(set(bits)))
    w: dict = {}
    a: dict = {}
    template = None
    for b in bits:
        qm = QModel(graph, BitAssignment.uniform(LayerBits(b, b)))
        calibrate(qm, calib)
        for n in graph.layer_names:
            w[(n, b)] = qm.w_scales[_key(n)].detach().clone()
        for q, qz in qm.quantizers.items():
            # keyed by the quantizer's own bits (a lookup table's input takes more than b)
            a[(q, qz.bits)] = qm.a_scales[_key(q)].detach().clone()
        if template is None:
            template = lower(qm)
    if template is None:
        raise PrivQuantError("no candidate bit widths")
    return ScaleBook(w, a, template, bits)


def frozen_qmodel(graph: QGraph, bits: BitAssignment, scales: ScaleBook) -> QModel:
    """A QModel in quant mode whose step sizes are the ScaleBook's (for ``lower``)."""
    qm = QModel(graph, bits)
    with torch.no_grad():
        for n in graph.layer_names:
            b = qm.w_bits[n]
            if (n, b) not in scales.w:
                raise PrivQuantError(f"no frozen weight scale for {n!r} at {b} bits")
            qm.w_scales[_key(n)].copy_(scales.w[(n, b)])
        for q, qz in qm.quantizers.items():
            if (q, qz.bits) not in scales.a:
                raise PrivQuantError(f"no frozen activation scale for {q!r} at {qz.bits} bits")
            qm.a_scales[_key(q)].copy_(scales.a[(q, qz.bits)])
    qm.mode = "quant"
    return qm.eval()


# ---------------------------------------------------------------------- symbolic lowering
class _LazyInfo:
    """A tensor's facts for a signature: the shape at once, bounds and scale only when read (so
    a term depends only on the variables its signature actually reads)."""

    __slots__ = ("ctx", "name", "shape")

    def __init__(self, ctx: SymbolicContext, name: str, shape):
        self.ctx, self.name, self.shape = ctx, name, shape

    lo = property(lambda s: s.ctx.info(s.name).lo)
    hi = property(lambda s: s.ctx.info(s.name).hi)
    scale = property(lambda s: s.ctx.info(s.name).scale)
    bits = property(lambda s: s.ctx.info(s.name).bits)


class SymbolicContext(LowerContext):
    """The lowering (:mod:`privquant.quant.lower`, the graph kinds' own ``lower``) evaluated
    lazily for one assignment of the decision variables, recording which variables it reads
    (``used``): how a term of the table finds what its cost depends on. There is no second copy
    of the lowering here."""

    def __init__(self, sym: SymbolicLowering, values: dict[str, int]):
        super().__init__(sym.graph, sym.final)
        self.sym = sym
        self.values = values
        self.used: set[str] = set()
        self._own: dict[str, list[str]] = {}

    # -- variables
    def var(self, name: str) -> int:
        self.used.add(name)
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(f"internal: {name} read but not in the configuration") from None

    def qbits(self, q: str) -> int:
        d = self.sym.vars.derived.get(q)
        if d is not None:
            b = max((self.var(avar(s)) for s in d), default=8)
            return self.sym.graph.derived_bits(q, b)
        return self.var(avar(q))

    def w_bits(self, layer):
        return self.var(wvar(layer))

    def w_scale(self, layer):
        return self.sym.scales.w_scale(layer, self.w_bits(layer))

    def quantizer(self, q):
        if q not in self.sym.qspec:
            return None
        return self.sym.quantizer(q, self.qbits(q))

    def a_scale(self, q):
        return self.sym.scales.a_scale(q, self.qbits(q))

    # -- lazy graph: a tensor's facts are computed on first use, by the step that emits it
    def tensor_of(self, node):
        return self.sym.produced[node]  # structure does not depend on the variables

    def _ensure(self, tensor: str) -> None:
        if tensor in self.tensors:
            return
        node = self.graph.node(self.sym.origin[tensor])
        if node.name not in self._own:
            self._own[node.name] = self.lower_own(node)
        if tensor not in self.tensors:  # the quantizer's requant op
            self.finish(node, self._own[node.name])

    def info(self, tensor):
        q = self.sym.requantized.get(tensor)
        if q is not None and tensor not in self.tensors:
            # a requant's output facts depend only on its quantizer: no need to build the op
            s_out = self.a_scale(q)
            lo, hi = requant_clip(self.quantizer(q), s_out)
            return TensorInfo(tensor, self.sym.template.tensors[tensor].shape, lo, hi, s_out)
        self._ensure(tensor)
        return self.tensors[tensor]

    def real(self, tensor):
        q = self.sym.requantized.get(tensor)
        if q is not None and tensor not in self.tensors:
            return np.asarray(self.a_scale(q))
        self._ensure(tensor)
        return self.reals[tensor]

    def op(self, top: Op) -> Op:
        """The op the lowering emits for ``top``'s output under these values."""
        self._ensure(top.output)
        return self.ops[top.output]

    # ------------------------------------------------------------------ ring atoms
    def atom(self, spec: tuple[str, str]) -> int:
        kind, name = spec
        if kind == "bits":
            return self.info(name).bits
        if kind == "diff":
            x = self.info(name)
            return signed_bits(x.lo - x.hi, x.hi - x.lo)
        if kind == "own":
            op, prog = self._program(self.sym.producer[name])
            return ops.get(op.kind).own_ring(op, prog)
        if kind == "ring":
            return self.ring(name)
        raise ValueError(kind)

    def ring(self, t: str) -> int:
        return max(self.atom(s) for s in self.sym.atoms(t))

    def _program(self, top: Op) -> tuple[Op, Program]:
        op = self.op(top)
        names = dict.fromkeys([*op.inputs, op.output])
        shapes = self.sym.template.tensors
        tensors = {t: _LazyInfo(self, t, shapes[t].shape) for t in names}
        return op, Program(self.sym.template.model, [op], tensors, {})

    def cost(self, top: Op, rings: dict[str, int]) -> Cost:
        op, prog = self._program(top)
        return ops.op_cost(
            op, prog, rings, self.sym.batch, self.sym.backend, self.sym.preprocessing
        )

    def costs_over_ring(
        self, top: Op, rings: dict[str, int], ext: str, domain: tuple[int, ...]
    ) -> np.ndarray:
        """``(len(domain), 4)`` costs of ``top`` with ring ``ext`` set to each domain value."""
        out = np.full((len(domain), len(FIELDS)), IMPOSSIBLE, dtype=np.int64)
        op, prog = self._program(top)
        for j, r in enumerate(domain):
            try:
                c = ops.op_cost(
                    op,
                    prog,
                    {**rings, ext: r},
                    self.sym.batch,
                    self.sym.backend,
                    self.sym.preprocessing,
                )
            except PrivQuantError:
                continue
            out[j] = cost_array(c)
        return out


class _StructureContext(SymbolicContext):
    """The lowering run eagerly once (all variables at 8 bits), only to learn the structure."""

    tensor_of = LowerContext.tensor_of
    info = LowerContext.info
    real = LowerContext.real


def ring_tensors(op: Op) -> list[str]:
    """Tensors whose ring width enters ``op``'s signature (the op kind says)."""
    return ops.get(op.kind).ring_tensors(op)


class SymbolicLowering:
    """The program's public, bit-dependent fields as functions of the decision variables."""

    def __init__(
        self,
        graph: QGraph,
        scales: ScaleBook,
        *,
        batch: int = 1,
        backend: str = "privquant",
        preprocessing: str = "dealer",
    ):
        self.graph = graph
        self.preprocessing = preprocessing
        self.vars = BitVars(graph)
        self.scales = scales
        self.template = scales.template
        self.batch = batch
        self.backend = backend
        qm = QModel(graph, BitAssignment.uniform(LayerBits(8, 8)))
        self.final = qm.final
        self.qspec = {q: (qz.signed, qz.relu6, qz.dip) for q, qz in qm.quantizers.items()}
        self.producer = {op.output: op for op in self.template.ops}
        self.consumers = self.template.consumers()
        self._atoms: dict[str, list[tuple[str, str]]] = {}
        # structure, from one concrete lowering: which node emits each tensor, which tensor holds
        # each node's value, and which tensors are a quantizer's requant output
        self.origin: dict[str, str] = {}
        ctx = _StructureContext(self, {v: 8 for v in self.vars.names})
        for n in graph.nodes:
            before = set(ctx.tensors)
            ctx.lower_node(n)
            self.origin.update(dict.fromkeys(set(ctx.tensors) - before, n.name))
        self.produced = dict(ctx.produced)
        self.requantized = {ctx.produced[q]: q for q in self.qspec}

    def quantizer(self, q: str, bits: int) -> ActQuantizer:
        signed, relu6, dip = self.qspec[q]
        return ActQuantizer(q, bits, signed, relu6, dip)

    def evaluator(self, values: dict[str, int]) -> SymbolicContext:
        return SymbolicContext(self, values)

    def atoms(self, t: str) -> list[tuple[str, str]]:
        """``ring_bits`` unrolled: ring(t) = max over these atoms."""
        if t not in self._atoms:
            out = []
            for a in ring_atoms(self.template, t, self.consumers):
                out += self.atoms(a[1]) if a[0] == "ring" else [a]
            self._atoms[t] = list(dict.fromkeys(out))
        return self._atoms[t]

    def program(self, values: dict[str, int]) -> Program:
        """The weight-free program for ``values`` (what ``lower`` emits with these scales)."""
        ev = self.evaluator(values)
        ops_ = [ev.op(op) for op in self.template.ops]
        tensors = {name: ev.info(name) for name in self.template.tensors}
        return Program(self.template.model, ops_, tensors, {})


# ---------------------------------------------------------------------- the table
def configs(domains: list[tuple[int, ...]]):
    return itertools.product(*domains)


def config_index(vars_: tuple[str, ...], domains: dict[str, tuple[int, ...]], values) -> int:
    idx = 0
    for v in vars_:
        d = domains[v]
        idx = idx * len(d) + d.index(values[v])
    return idx


@dataclass
class Atom:
    """One candidate of a ring's max: ``values[config_index(vars)]``."""

    vars: tuple[str, ...]
    values: np.ndarray


@dataclass
class Ring:
    """``ring = max(atom values)``; ``domain`` lists every value it can take."""

    name: str
    atoms: list[Atom]
    domain: tuple[int, ...]


@dataclass
class Term:
    """Cost of one op (scope ``scope``) per configuration of ``vars`` (product order of their
    domains) -- shape ``(configs, 4)`` -- or, with a ``ring``, per configuration and ring value --
    shape ``(configs, len(ring.domain), 4)``; ``IMPOSSIBLE`` marks pairs that cannot occur."""

    scope: str
    kind: str
    vars: tuple[str, ...]
    cost: np.ndarray
    ring: str | None = None


@dataclass
class CostTable:
    """Exact communication cost of every bit assignment, as a sum of small tables."""

    model: str
    domains: dict[str, tuple[int, ...]]
    terms: list[Term]
    rings: dict[str, Ring]
    constant: dict[str, Cost] = field(default_factory=dict)  # scope -> cost of var-free ops
    backend: str = "privquant"
    batch: int = 1
    preprocessing: str = "dealer"
    bitvars: BitVars | None = None
    scales: ScaleBook | None = None
    #: non-decomposable per-session scopes of an assignment (``ot``: the HE public keys)
    session: object = None
    # extra per-value data (sensitivity of derived quantizers lives in search, not here)

    @property
    def variables(self) -> list[str]:
        return list(self.domains)

    def ring_value(self, ring: Ring, values: dict[str, int]) -> int:
        return _ring_value(ring, self.domains, values)

    def term_cost(self, term: Term, values: dict[str, int]) -> np.ndarray:
        i = config_index(term.vars, self.domains, values)
        if term.ring is None:
            c = term.cost[i]
        else:
            ring = self.rings[term.ring]
            c = term.cost[i, ring.domain.index(self.ring_value(ring, values))]
        if (c == IMPOSSIBLE).any():
            raise PrivQuantError(f"cost table: impossible configuration for {term.scope!r}")
        return c

    def evaluate(self, values: dict[str, int]) -> tuple[Cost, dict[str, Cost]]:
        """Exact ``(total, {scope: Cost})`` of one assignment of the variables.

        In ``ot`` mode two things are not sums of per-op terms and are handled here: the
        session's HE public keys (one per distinct SEAL context of the layers that use HE: the
        ``session`` term, computed from the lowered public program of ``values``), and rounds,
        which the terms add per op -- an upper bound of the declared per-scope clock model
        (``costs.declared``), by at most one round per layer whose ops overlap."""
        missing = [v for v in self.domains if v not in values]
        if missing:
            raise PrivQuantError(f"assignment misses variables {missing}")
        for v, d in self.domains.items():
            if values[v] not in d:
                raise PrivQuantError(f"{v}={values[v]} is not a candidate ({list(d)})")
        scopes: dict[str, np.ndarray] = {k: cost_array(c) for k, c in self.constant.items()}
        for t in self.terms:
            c = self.term_cost(t, values)
            scopes[t.scope] = scopes[t.scope] + c if t.scope in scopes else c.copy()
        per = {k: as_cost(v) for k, v in scopes.items()}
        if self.session is not None:
            per.update(self.session(values))
        return Cost.sequence(per.values()), per

    def evaluate_bits(self, bits: BitAssignment) -> tuple[Cost, dict[str, Cost]]:
        if self.bitvars is None:
            raise PrivQuantError("this cost table has no graph variables")
        return self.evaluate(self.bitvars.values(bits))

    def size(self) -> dict[str, int]:
        return {
            "variables": len(self.domains),
            "terms": len(self.terms),
            "rings": len(self.rings),
            "entries": int(sum(t.cost.size // len(FIELDS) for t in self.terms)),
        }

    def to_dict(self) -> dict:
        """JSON-able dump: every term's key and entries (for inspection, ``search --table``)."""
        terms = []
        for t in self.terms:
            doms = [self.domains[v] for v in t.vars]
            rows = []
            for i, cfg in enumerate(configs(doms)):
                key = dict(zip(t.vars, cfg))
                if t.ring is None:
                    rows.append({"key": key, **dict(zip(FIELDS, map(int, t.cost[i])))})
                else:
                    for j, r in enumerate(self.rings[t.ring].domain):
                        if t.cost[i, j, 0] != IMPOSSIBLE:
                            rows.append(
                                {"key": key, "ring": r, **dict(zip(FIELDS, map(int, t.cost[i, j])))}
                            )
            terms.append(
                {
                    "scope": t.scope,
                    "kind": t.kind,
                    "vars": list(t.vars),
                    "ring": t.ring,
                    "rows": rows,
                }
            )
        return {
            "model": self.model,
            "backend": self.backend,
            "preprocessing": self.preprocessing,
            "batch": self.batch,
            "domains": {k: list(v) for k, v in self.domains.items()},
            "constant": {k: c.as_dict() for k, c in self.constant.items()},
            "rings": {
                k: {"domain": list(r.domain), "atoms": [list(a.vars) for a in r.atoms]}
                for k, r in self.rings.items()
            },
            "terms": terms,
        }


def _ring_value(ring: Ring, domains, values) -> int:
    return max(int(a.values[config_index(a.vars, domains, values)]) for a in ring.atoms)


def _enumerate(vars_: tuple[str, ...], domains: dict[str, tuple[int, ...]]):
    for cfg in configs([domains[v] for v in vars_]):
        yield dict(zip(vars_, cfg))


def build_cost_table(
    graph: QGraph,
    calib: torch.Tensor | None = None,
    *,
    wbits: Iterable[int] = DEFAULT_WBITS,
    abits: Iterable[int] = DEFAULT_ABITS,
    backend: str = "privquant",
    batch: int = 1,
    scales: ScaleBook | None = None,
    progress: bool = False,
    preprocessing: str = "dealer",
) -> CostTable:
    """The exact cost table of ``graph`` over the candidate bit widths (no protocol execution),
    under the named preprocessing provider (``dealer`` or ``ot``).

    ``calib``: uint8 calibration images (the same ones ``quantize`` gets, so that the frozen
    scales are ``calibrate``'s); or pass ``scales`` directly.
    """
    from tqdm import tqdm

    wbits, abits = tuple(sorted(set(wbits))), tuple(sorted(set(abits)))
    for b in (*wbits, *abits):
        LayerBits(b, b)  # range check
    if not wbits or not abits:
        raise PrivQuantError("need at least one candidate weight and activation bit width")
    if batch < 1:
        raise PrivQuantError("batch must be at least 1")
    if scales is None:
        if calib is None:
            raise PrivQuantError("build_cost_table needs calibration images or a ScaleBook")
        scales = frozen_scales(graph, calib, set(wbits) | set(abits))
    missing = sorted((set(wbits) | set(abits)) - set(scales.bits))
    if missing:
        raise PrivQuantError(f"the ScaleBook has no scales for bit widths {missing}")
    sym = SymbolicLowering(graph, scales, batch=batch, backend=backend, preprocessing=preprocessing)
    bv = sym.vars
    domains = {wvar(n): wbits for n in bv.layers}
    domains.update({avar(q): abits for q in bv.free})
    ref = {v: d[-1] for v, d in domains.items()}

    atom_cache: dict[tuple[str, str], Atom] = {}

    def atom_table(spec) -> Atom:
        if spec not in atom_cache:
            ev = sym.evaluator(ref)
            ev.atom(spec)
            vars_ = tuple(v for v in domains if v in ev.used)
            vals = np.array(
                [sym.evaluator(cfg).atom(spec) for cfg in _enumerate(vars_, domains)],
                dtype=np.int64,
            )
            atom_cache[spec] = Atom(vars_, vals)
        return atom_cache[spec]

    rings: dict[str, Ring] = {}

    def ring_of(t: str) -> Ring:
        if t not in rings:
            atoms = [atom_table(s) for s in sym.atoms(t)]
            lb = max(int(a.values.min()) for a in atoms)
            dom = sorted({int(v) for a in atoms for v in a.values if v >= lb})
            # drop atoms another atom always dominates (they never decide the max)
            keep = []
            for i, a in enumerate(atoms):
                dominated = any(
                    j != i
                    and int(a.values.max()) <= int(b.values.min())
                    and (int(a.values.max()) < int(b.values.min()) or j < i)
                    for j, b in enumerate(atoms)
                )
                if not dominated:
                    keep.append(a)
            rings[t] = Ring(t, keep, tuple(dom))
        return rings[t]

    def nconf(vars_) -> int:
        return int(np.prod([len(domains[v]) for v in vars_])) if vars_ else 1

    terms: list[Term] = []
    constant: dict[str, Cost] = {SEEDS_SCOPE: provider_setup_cost(preprocessing)}
    ops = list(sym.template.ops)
    bar = tqdm(ops, desc="cost table", disable=not progress, leave=False)
    for top in bar:
        rt = ring_tensors(top)
        ref_rings = {t: sym.evaluator(ref).ring(t) for t in rt}
        ev = sym.evaluator(ref)
        ev.cost(top, ref_rings)
        sig_used = set(ev.used)
        key = set(sig_used)
        external: list[str] = []
        for t in rt:
            ring = ring_of(t)
            need = set().union(*(a.vars for a in ring.atoms)) if ring.atoms else set()
            if len(ring.domain) == 1 or nconf(key | need) <= MAX_FACTOR_CONFIGS:
                key |= need
            else:
                external.append(t)
        if len(external) > 1:
            raise PrivQuantError(
                f"cost table: op {top.name!r} depends on {len(external)} wide rings; unsupported"
            )
        vars_ = tuple(v for v in domains if v in key)
        ext = external[0] if external else None
        rows = []
        for cfg in _enumerate(vars_, domains):
            e = sym.evaluator(cfg)
            folded = {t: _ring_value(rings[t], domains, cfg) for t in rt if t != ext}
            if ext is None:
                rows.append(cost_array(e.cost(top, folded)))
            else:
                rows.append(e.costs_over_ring(top, folded, ext, rings[ext].domain))
        cost = np.stack(rows)
        if ext is None and (cost == cost[0]).all():
            c = as_cost(cost[0])
            if c != ZERO or top.name not in constant:
                constant[top.name] = constant[top.name].then(c) if top.name in constant else c
            continue
        terms.append(Term(top.name, top.kind, vars_, cost, ext))
    bar.close()
    used_rings = {t.ring for t in terms if t.ring is not None}
    return CostTable(
        graph.model,
        domains,
        terms,
        {k: v for k, v in rings.items() if k in used_rings},
        constant,
        backend=backend,
        batch=batch,
        preprocessing=preprocessing,
        bitvars=bv,
        scales=scales,
        session=_he_keys_session(sym, backend) if preprocessing == "ot" else None,
    )


def _he_keys_session(sym: SymbolicLowering, backend: str):
    """``values -> {HE_KEYS_SCOPE: Cost}`` (empty if no layer uses HE) for an ``ot`` table."""
    from privquant.costs import he_keys_scope
    from privquant.program import ring_bits

    def session(values: dict[str, int]) -> dict[str, Cost]:
        prog = sym.program(values)
        c = he_keys_scope(prog, ring_bits(prog), backend, None)
        return {HE_KEYS_SCOPE: c} if c is not None else {}

    return session


__all__ = [
    "DEFAULT_ABITS",
    "DEFAULT_WBITS",
    "FIELDS",
    "Atom",
    "BitVars",
    "CostTable",
    "Ring",
    "ScaleBook",
    "SymbolicLowering",
    "Term",
    "avar",
    "build_cost_table",
    "frozen_qmodel",
    "frozen_scales",
    "program_cost",
    "wvar",
]
