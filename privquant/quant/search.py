"""Communication-aware mixed-precision search: an exact integer linear program over the cost table.

Decision: one weight width per conv/linear and one width per activation quantizer (layers that
read one quantizer share it: the tie groups come from the graph, ``costtable.BitVars``).
Objective (default): minimize the summed sensitivity (``quant.sensitivity``); constraints: any
subset of the metrics below under a bound. Or minimize a metric, optionally under a sensitivity
bound.

Metrics are linear in the protocols' declared cost fields (``Cost``):

* ``mb``: (online + offline) bits / 8e6 per inference; with ``include_setup`` also
  ``setup / amortize`` (setup traffic is paid once per model load);
* ``rounds``: the sum of the per-layer rounds (an upper bound of the session depth, which can
  overlap consecutive layers by one message; ``protocols.channel``);
* ``lan`` / ``wan``: estimated online latency in ms, ``online_bits / bandwidth + rounds * RTT/2``:
  the one latency model of the project (``privquant.baselines.latency``: its networks -- LAN
  1 Gbit/s 0.5 ms RTT, WAN 400 Mbit/s 40 ms RTT -- and its ``estimate`` without the measured
  compute term).

The MILP (``scipy.optimize.milp``, HiGHS) is exact for the cost table, not an approximation of it:

* ``y[v, b]`` binary, one-hot per variable;
* for every group of variables a table term or ring atom is keyed by, continuous
  ``z[F, c] in [0, 1]`` per joint configuration ``c`` with marginal constraints
  ``sum_{c: c_v = b} z[F, c] = y[v, b]``: once ``y`` is integral the only feasible ``z`` is the
  indicator of the chosen configuration, so a term's cost ``sum_c cost[c] z[F, c]`` is exact;
* a ring that depends on a wide neighbourhood is ``R = max_j atom_j`` (``program.ring_bits``):
  ``lambda[R, r]`` binary one-hot over its possible values, ``sum_r r lambda >= atom_j`` for every
  atom and ``<= atom_j + M_j (1 - delta_j)`` with ``delta`` binary one-hot (which atom attains the
  max): ``R`` equals the max exactly;
* a term whose cost depends on such a ring gets ``u[k, r] in [0, 1]`` per (class of
  configurations with the same cost row, ring value) with ``sum_r u[k, r] = sum_{c in k} z[F, c]``
  and ``sum_k u[k, r] = lambda[R, r]``: with one-hot margins ``u`` is their product, so the cost
  ``sum cost[k, r] u[k, r]`` is exact. Pairs that cannot occur have no ``u`` column.

So every feasible MILP point is an assignment with its exact table cost, and the optimum is the
optimum over all assignments (tests compare with brute force). The table uses calibration scales
frozen per bit width (``costtable``); ``Searcher.candidates`` then builds every solution with the
quantize pipeline (``quant.pipeline``: what ``privquant.quantize`` runs; PTQ, the same calibration
images) and reports *that* program's declared cost -- what ``privquant infer`` measures -- as the
prediction. When the re-lowered cost exceeds the budget (calibration picks slightly different
scales for mixed assignments: measured on random resnet8 assignments, -0.3%..+3% of the cost,
mostly under 1%), the assignment is excluded by a no-good cut, the table-side bound is tightened
by the overshoot and the MILP is solved again; budget left unused by the re-lowering is offered
back the same way (a few solves at most).

k best: ``Searcher.candidates(k=K, distance=D)`` keeps solving after the optimum, cutting off every
accepted assignment's Hamming neighbourhood of radius ``D - 1`` (``sum_v y[v, b_v] <= n - D``), so
it returns the K best assignments by the objective that meet the limits exactly and differ
pairwise in at least D widths. ``quant.selection`` chooses among them by validation accuracy;
``quant.sweep`` traces the accuracy-vs-MB front.

Fine-tuning (``quant.selection.train_point``, ``privquant quantize --freeze-scales``) is QAT from
the FP32 weights with calibration's step sizes frozen by default: every public integer of the
program and therefore its cost stays exactly the prediction (learning the step sizes too,
``--learn-scales``, gained ~0.2 point of top-1 on resnet8 and moved the cost by up to ~2%).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from privquant.baselines.latency import NETWORKS
from privquant.errors import PrivQuantError
from privquant.protocols.preprocessing.base import check_mode
from privquant.protocols.primitives.cost import Cost
from privquant.quant.costtable import (
    DEFAULT_ABITS,
    DEFAULT_WBITS,
    FIELDS,
    IMPOSSIBLE,
    CostTable,
    avar,
    build_cost_table,
    config_index,
    frozen_scales,
    program_cost,
    wvar,
)
from privquant.quant.graph import QGraph, capture
from privquant.quant.pipeline import Quantized, check_calibration, quantize_graph
from privquant.quant.sensitivity import Sensitivity, sensitivity
from privquant.quant.spec import BitAssignment, LayerBits

MB = 8e6  # bits per (decimal) megabyte
DEFAULT_AMORTIZE = 100


METRICS = ("mb", "rounds", "lan", "wan")


@dataclass(frozen=True)
class Metric:
    """A linear functional of a Cost: ``sum_f coef[f] * cost.f``."""

    name: str
    coef: tuple[float, float, float, float]
    unit: str

    def of(self, c: Cost) -> float:
        return float(sum(k * getattr(c, f) for k, f in zip(self.coef, FIELDS)))


def metric(name: str, *, amortize: int = DEFAULT_AMORTIZE, include_setup: bool = False) -> Metric:
    if name == "mb":
        if amortize < 1:
            raise PrivQuantError("--amortize must be at least 1")
        s = 1.0 / amortize / MB if include_setup else 0.0
        return Metric("mb", (1 / MB, 1 / MB, s, 0.0), "MB")
    if name == "rounds":
        return Metric("rounds", (0.0, 0.0, 0.0, 1.0), "rounds")
    if name in NETWORKS:
        # privquant.baselines.latency.estimate without its measured compute term
        n = NETWORKS[name]
        return Metric(name, (1e3 / n.bandwidth_bps, 0.0, 0.0, 1e3 * n.rtt_s / 2), "ms")
    raise PrivQuantError(f"unknown metric {name!r}; choose from {list(METRICS)}")


# ---------------------------------------------------------------------- objective terms
@dataclass
class ScalarTerm:
    """An objective contribution per configuration of ``vars`` (product order of domains)."""

    vars: tuple[str, ...]
    values: np.ndarray


def sensitivity_terms(table: CostTable, sens: Sensitivity) -> list[ScalarTerm]:
    """The sensitivity objective as table-shaped terms (a derived quantizer takes the max of its
    sources' widths, like QModel)."""
    bv = table.bitvars
    if bv is None:
        raise PrivQuantError("sensitivity terms need a cost table built from a graph")
    out = []
    for n in bv.layers:
        v = wvar(n)
        out.append(ScalarTerm((v,), np.array([sens.weights[n][b] for b in table.domains[v]])))
    for q in bv.free:
        v = avar(q)
        out.append(ScalarTerm((v,), np.array([sens.acts[q][b] for b in table.domains[v]])))
    for q, srcs in bv.derived.items():
        vars_ = tuple(avar(s) for s in srcs)
        if not vars_:
            out.append(ScalarTerm((), np.array([sens.acts[q].get(8, 0.0)])))
            continue
        vals = []
        for cfg in itertools.product(*(table.domains[v] for v in vars_)):
            vals.append(sens.acts[q][max(cfg)])
        out.append(ScalarTerm(vars_, np.array(vals)))
    return out


def scalar_value(terms: list[ScalarTerm], table: CostTable, values: dict[str, int]) -> float:
    return float(sum(t.values[config_index(t.vars, table.domains, values)] for t in terms))


# ---------------------------------------------------------------------- the MILP
class _Model:
    """Column/row bookkeeping for one MILP over a CostTable."""

    def __init__(self, table: CostTable, scalars: list[ScalarTerm]):
        self.table = table
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integ: list[int] = []
        self.rows: list[tuple[dict[int, float], float, float]] = []
        # per-field linear expression of the total cost: {col: coef} and a constant
        self.field_expr = [dict() for _ in FIELDS]
        self.field_const = np.array(
            [sum(getattr(c, f) for c in table.constant.values()) for f in FIELDS], dtype=float
        )
        self.scalar_expr: dict[int, float] = {}
        self.scalar_const = 0.0
        self.y: dict[str, list[int]] = {}
        self.z: dict[tuple[str, ...], list[int]] = {}
        for v, dom in table.domains.items():
            cols = [self._col(0, 1, 1) for _ in dom]
            self.y[v] = cols
            self._row({c: 1.0 for c in cols}, 1, 1)
        self.lam: dict[str, list[int]] = {}
        for name, ring in table.rings.items():
            self._ring(name, ring)
        for t in table.terms:
            self._term(t)
        for s in scalars:
            if not s.vars:
                self.scalar_const += float(s.values[0])
                continue
            for c, val in zip(self._factor(s.vars), s.values):
                self.scalar_expr[c] = self.scalar_expr.get(c, 0.0) + float(val)

    def _col(self, lb, ub, integer) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.integ.append(integer)
        return len(self.lb) - 1

    def _row(self, coefs: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((coefs, lo, hi))

    def _factor(self, vars_: tuple[str, ...]) -> list[int]:
        """Columns of the indicator of every joint configuration of ``vars_``."""
        if len(vars_) == 1:
            return self.y[vars_[0]]
        if vars_ not in self.z:
            doms = [self.table.domains[v] for v in vars_]
            shape = [len(d) for d in doms]
            n = int(np.prod(shape))
            cols = [self._col(0, 1, 0) for _ in range(n)]
            grid = np.arange(n).reshape(shape)
            for i, v in enumerate(vars_):
                for j in range(shape[i]):
                    sel = np.take(grid, j, axis=i).ravel()
                    row = {cols[k]: 1.0 for k in sel}
                    row[self.y[v][j]] = -1.0
                    self._row(row, 0, 0)
            self.z[vars_] = cols
        return self.z[vars_]

    def _expr(self, vars_, values) -> tuple[dict[int, float], float]:
        if not vars_:
            return {}, float(values[0])
        return {c: float(v) for c, v in zip(self._factor(vars_), values)}, 0.0

    def _ring(self, name: str, ring) -> None:
        dom = ring.domain
        lam = [self._col(0, 1, 1) for _ in dom]
        self.lam[name] = lam
        self._row({c: 1.0 for c in lam}, 1, 1)
        rexpr = {c: float(r) for c, r in zip(lam, dom)}
        atoms = ring.atoms
        deltas = [self._col(0, 1, 1) for _ in atoms] if len(atoms) > 1 else []
        if deltas:
            self._row({c: 1.0 for c in deltas}, 1, 1)
        for j, a in enumerate(atoms):
            e, k = self._expr(a.vars, a.values)
            row = dict(rexpr)
            for c, v in e.items():
                row[c] = row.get(c, 0.0) - v
            if not deltas:  # R == atom
                self._row(row, k, k)
                continue
            self._row(row, k, np.inf)  # R >= atom
            big = float(max(dom) - int(np.min(a.values)))
            row2 = dict(row)
            row2[deltas[j]] = big
            self._row(row2, -np.inf, k + big)  # R <= atom + M (1 - delta)

    def _add_cost(self, col: int, cost: np.ndarray) -> None:
        for f in range(len(FIELDS)):
            if cost[f]:
                self.field_expr[f][col] = self.field_expr[f].get(col, 0.0) + float(cost[f])

    def _term(self, t) -> None:
        if not t.vars:  # constant (should have been folded into table.constant)
            self.field_const += t.cost.reshape(-1, len(FIELDS))[0]
            return
        zc = self._factor(t.vars)
        if t.ring is None:
            for c, cost in zip(zc, t.cost):
                self._add_cost(c, cost)
            return
        lam = self.lam[t.ring]
        classes: dict[bytes, list[int]] = {}
        rows: dict[bytes, np.ndarray] = {}
        for i, row in enumerate(t.cost):
            k = row.tobytes()
            classes.setdefault(k, []).append(i)
            rows[k] = row
        col_sum: dict[int, dict[int, float]] = {j: {lam[j]: -1.0} for j in range(len(lam))}
        for k, members in classes.items():
            row = rows[k]
            urow = {zc[i]: -1.0 for i in members}
            for j in range(len(lam)):
                if (row[j] == IMPOSSIBLE).any():
                    continue
                u = self._col(0, 1, 0)
                urow[u] = 1.0
                col_sum[j][u] = 1.0
                self._add_cost(u, row[j])
            self._row(urow, 0, 0)
        for r in col_sum.values():
            self._row(r, 0, 0)

    # ------------------------------------------------------------------ solving
    def linear(self, m: Metric) -> tuple[dict[int, float], float]:
        out: dict[int, float] = {}
        for k, expr in zip(m.coef, self.field_expr):
            if k:
                for c, v in expr.items():
                    out[c] = out.get(c, 0.0) + k * v
        return out, float(np.dot(m.coef, self.field_const))

    def solve(
        self,
        objective: Metric | None,
        limits: list[tuple[Metric | None, float]],
        exclude: list[dict[str, int] | tuple[dict[str, int], int]],
        *,
        time_limit: float,
        gap: float,
    ) -> tuple[dict[str, int] | None, dict]:
        n = len(self.lb)
        rows = list(self.rows)
        for m, bound in limits:
            expr, const = (self.scalar_expr, self.scalar_const) if m is None else self.linear(m)
            rows.append((expr, -np.inf, bound - const))
        for item in exclude:
            # no-good cut: at least `dist` variables differ from `values` (Hamming distance)
            values, dist = item if isinstance(item, tuple) else (item, 1)
            cut = {self.y[v][self.table.domains[v].index(b)]: 1.0 for v, b in values.items()}
            rows.append((cut, -np.inf, len(cut) - dist))
        obj_expr = self.scalar_expr if objective is None else self.linear(objective)[0]
        c = np.zeros(n)
        for col, v in obj_expr.items():
            c[col] = v
        scale = float(np.abs(c).max()) or 1.0
        c /= scale
        data, ri, ci = [], [], []
        lo, hi = np.empty(len(rows)), np.empty(len(rows))
        for i, (coefs, a, b) in enumerate(rows):
            for col, v in coefs.items():
                ri.append(i)
                ci.append(col)
                data.append(v)
            lo[i], hi[i] = a, b
        A = sp.csr_array((data, (ri, ci)), shape=(len(rows), n))
        t0 = time.perf_counter()
        res = milp(
            c,
            integrality=np.array(self.integ),
            bounds=Bounds(np.array(self.lb, float), np.array(self.ub, float)),
            constraints=LinearConstraint(A, lo, hi),
            # HiGHS's presolve removes almost nothing from these models and took ~30% of the CPU
            # time of a resnet8 solve (7.3 s -> 5.2 s); the solver's restarts shrink it anyway
            options={
                "time_limit": time_limit,
                "mip_rel_gap": gap,
                "disp": False,
                "presolve": False,
            },
        )
        info = {
            "status": int(res.status),
            "message": str(res.message),
            "seconds": time.perf_counter() - t0,
            "columns": n,
            "integer_columns": int(sum(self.integ)),
            "rows": len(rows),
            "mip_gap": float(getattr(res, "mip_gap", 0.0) or 0.0),
        }
        if res.x is None:
            return None, info
        values = {
            v: self.table.domains[v][int(np.argmax(res.x[cols]))] for v, cols in self.y.items()
        }
        info["objective"] = float(res.fun) * scale
        return values, info


def solve(
    table: CostTable,
    scalars: list[ScalarTerm] | None = None,
    *,
    objective: Metric | None = None,
    limits: dict | None = None,
    max_scalar: float | None = None,
    exclude: list[dict[str, int] | tuple[dict[str, int], int]] | None = None,
    time_limit: float = 120.0,
    gap: float = 1e-6,
    model: _Model | None = None,
) -> tuple[dict[str, int] | None, dict]:
    """Optimal variable values for ``table``: minimize ``objective`` (a Metric, or the scalar
    terms -- the sensitivity -- when None) subject to ``metric <= bound`` for every
    ``(Metric, bound)`` in ``limits`` and ``sum scalars <= max_scalar``, outside every excluded
    assignment (``values``, or ``(values, d)``: every point within Hamming distance ``d - 1`` of
    ``values`` is excluded too). Returns ``(values, info)``; ``values`` is None when infeasible
    (``info['status']`` says why)."""
    scalars = scalars or []
    if objective is None and not scalars:
        raise PrivQuantError("minimizing the sensitivity needs sensitivity terms")
    m = model or _Model(table, scalars)
    lim = list((limits or {}).items()) if isinstance(limits, dict) else list(limits or [])
    if max_scalar is not None:
        lim.append((None, max_scalar))
    values, info = m.solve(objective, lim, list(exclude or []), time_limit=time_limit, gap=gap)
    if values is not None:
        _check(table, scalars, values, info, objective, m)
    return values, info


def _check(table, scalars, values, info, objective, m) -> None:
    """The MILP's objective must equal the table's exact value at the returned point."""
    if objective is None:
        exact = scalar_value(scalars, table, values)
    else:
        exact = objective.of(table.evaluate(values)[0])
    got = info["objective"] + (m.scalar_const if objective is None else m.linear(objective)[1])
    info["objective"] = exact
    if not math.isclose(got, exact, rel_tol=1e-6, abs_tol=1e-9):
        raise PrivQuantError(
            f"internal: MILP objective {got!r} differs from the table's {exact!r} at its solution"
        )


# ---------------------------------------------------------------------- the searcher
@contextlib.contextmanager
def single_thread():
    """Calibration, lowering and the sensitivity passes are many small tensor ops: on a shared
    2-core machine one intra-op thread is several times faster (calibrating resnet18: 3 s with
    one thread, 15-23 s with two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class SearchResult:
    """One searched assignment, its exact predicted cost and how it was found."""

    assignment: BitAssignment
    values: dict[str, int]
    predicted: Cost  # declared cost of the program the quantize pipeline builds (PTQ)
    table_cost: Cost  # the cost table's value (frozen scales)
    sensitivity: float
    limits: dict[str, float]
    objective: str
    metrics: dict[str, float]
    iterations: int
    seconds: float
    solver: dict = field(default_factory=dict)
    rank: int = 0  # 0: the MILP optimum; i: the i-th next best (``Searcher.candidates``)

    def to_dict(self) -> dict:
        return {
            "assignment": self.assignment.to_dict(),
            "predicted": self.predicted.as_dict(),
            "predicted_metrics": self.metrics,
            "table_cost": self.table_cost.as_dict(),
            "sensitivity": self.sensitivity,
            "limits": self.limits,
            "objective": self.objective,
            "iterations": self.iterations,
            "seconds": self.seconds,
            "solver": self.solver,
            "rank": self.rank,
        }


class Searcher:
    """Graph, calibration, cost table and sensitivity of one model; solves for any budget.

    ``model`` is the float ``nn.Module``; ``calib`` the uint8 calibration images given to the
    quantize pipeline (``quant.pipeline``, what ``privquant.quantize`` runs), so predictions are
    exact for what ``quantize`` builds.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        name: str,
        input_shape: tuple[int, ...],
        calib: torch.Tensor,
        *,
        wbits=DEFAULT_WBITS,
        abits=DEFAULT_ABITS,
        method: str = "hessian",
        iters: int = 32,
        sens_batch: int | None = None,
        backend: str = "privquant",
        preprocessing: str = "dealer",
        batch: int = 1,
        amortize: int = DEFAULT_AMORTIZE,
        include_setup: bool = False,
        seed: int = 0,
        time_limit: float = 120.0,
        progress: bool = False,
    ):
        t0 = time.perf_counter()
        self.model, self.name, self.input_shape = model, name, tuple(input_shape)
        self.calib = check_calibration(calib, self.input_shape)
        self.backend, self.batch = backend, batch
        self.preprocessing = check_mode(preprocessing)
        self.amortize, self.include_setup = amortize, include_setup
        self.time_limit = time_limit
        self.progress = progress
        self.wbits, self.abits = tuple(sorted(set(wbits))), tuple(sorted(set(abits)))
        with single_thread():
            self.graph: QGraph = capture(model, name, self.input_shape)
            self.scales = frozen_scales(self.graph, calib, set(self.wbits) | set(self.abits) | {8})
            t1 = time.perf_counter()
            self.table = build_cost_table(
                self.graph,
                wbits=self.wbits,
                abits=self.abits,
                backend=backend,
                batch=batch,
                scales=self.scales,
                preprocessing=self.preprocessing,
                progress=progress,
            )
            t2 = time.perf_counter()
            self.sens = sensitivity(
                method,
                self.graph,
                self.scales,
                calib,
                wbits=self.wbits,
                abits=self.abits,
                iters=iters,
                batch=sens_batch,
                seed=seed,
                progress=progress,
            )
        self.scalars = sensitivity_terms(self.table, self.sens)
        self._model = _Model(self.table, self.scalars)
        self._exact: dict[tuple, tuple[Cost, Quantized]] = {}
        self.seconds = {
            "scales": t1 - t0,
            "cost_table": t2 - t1,
            "sensitivity": self.sens.seconds,
            "milp_build": time.perf_counter() - t2 - self.sens.seconds,
        }

    # ------------------------------------------------------------------ helpers
    def metric(self, name: str) -> Metric:
        return metric(name, amortize=self.amortize, include_setup=self.include_setup)

    def metrics(self, c: Cost) -> dict[str, float]:
        return {m: self.metric(m).of(c) for m in METRICS}

    def assignment(self, values: dict[str, int]) -> BitAssignment:
        return self.table.bitvars.assignment(values, model=self.name)

    def uniform_values(self, w: int, a: int) -> dict[str, int]:
        return self.table.bitvars.values(BitAssignment.uniform(LayerBits(w, a)))

    def fingerprint(self) -> str:
        """Identifies everything a point's program, cost and proxy score depend on: name,
        weights, calibration images, candidate widths, the cost table (so a change of any
        protocol's declared cost changes it) and the sensitivity values. Keys of cached
        evaluations (``quant.selection``)."""
        if not hasattr(self, "_fingerprint"):
            h = hashlib.sha256()
            h.update(repr((self.name, self.input_shape, self.backend, self.batch)).encode())
            h.update(self.preprocessing.encode())
            h.update(repr((self.wbits, self.abits, self.amortize, self.include_setup)).encode())
            for n in self.graph.layers:
                h.update(n.name.encode())
                h.update(n.weight.detach().numpy().tobytes())
                h.update(n.bias.detach().numpy().tobytes())
            h.update(self.calib.numpy().tobytes())
            for t in self.table.terms:
                h.update(repr((t.scope, t.vars, t.ring)).encode())
                h.update(np.ascontiguousarray(t.cost).tobytes())
            for name, ring in sorted(self.table.rings.items()):
                h.update(repr((name, ring.domain, [a.vars for a in ring.atoms])).encode())
                for a in ring.atoms:
                    h.update(np.ascontiguousarray(a.values).tobytes())
            h.update(
                repr(sorted((k, c.as_dict()) for k, c in self.table.constant.items())).encode()
            )
            h.update(json.dumps(self.sens.to_dict() | {"seconds": 0}, sort_keys=True).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def result(
        self,
        values: dict[str, int],
        limits: dict[str, float],
        objective: str = "sensitivity",
        *,
        rank: int = 0,
        iterations: int = 0,
        seconds: float = 0.0,
        solver: dict | None = None,
    ) -> SearchResult:
        """A SearchResult for ``values`` (exact re-lowered cost, table cost, proxy score)."""
        exact = self.exact(values)
        return SearchResult(
            self.assignment(values),
            dict(values),
            exact,
            self.table.evaluate(values)[0],
            self.sensitivity_of(values),
            dict(limits),
            objective,
            self.metrics(exact),
            iterations,
            seconds,
            dict(solver or {}),
            rank,
        )

    def quantize(self, values: dict[str, int], **kw) -> Quantized:
        """The quantize pipeline (what ``privquant.quantize`` runs) at ``values``; ``kw`` go to
        :func:`quant.pipeline.quantize_graph` (QAT data and settings)."""
        return quantize_graph(
            self.graph,
            self.calib,
            self.assignment(values),
            progress=kw.pop("progress", self.progress),
            **kw,
        )

    def exact(self, values: dict[str, int]) -> Cost:
        """Declared cost of the program the quantize pipeline builds (PTQ) for ``values``."""
        return self.ptq(values)[0]

    def ptq(self, values: dict[str, int]) -> tuple[Cost, Quantized]:
        key = tuple(sorted(values.items()))
        if key not in self._exact:
            with single_thread():
                q = self.quantize(values, progress=False)
            self._exact[key] = (self.declared(q.program), q)
        return self._exact[key]

    def declared(self, program) -> Cost:
        """``program``'s declared total cost at this search's batch, backend and provider."""
        return program_cost(
            program, batch=self.batch, backend=self.backend, preprocessing=self.preprocessing
        )[0]

    def sensitivity_of(self, values: dict[str, int]) -> float:
        return scalar_value(self.scalars, self.table, values)

    def solve(self, limits: dict[str, float], objective: str = "sensitivity", **kw):
        lim = [(None if k == "sensitivity" else self.metric(k), v) for k, v in limits.items()]
        obj = None if objective == "sensitivity" else self.metric(objective)
        return solve(
            self.table,
            self.scalars,
            objective=obj,
            limits=lim,
            time_limit=self.time_limit,
            model=self._model,
            **kw,
        )

    def minimum(self, name: str) -> tuple[float, dict[str, int]]:
        """The smallest value of metric ``name`` over all assignments (table) and its argmin."""
        values, info = self.solve({}, objective=name)
        if values is None:
            raise PrivQuantError(f"cannot minimize {name}: {info['message']}")
        return info["objective"], values

    # ------------------------------------------------------------------ search
    def search(
        self,
        limits: dict[str, float],
        objective: str = "sensitivity",
        *,
        max_iters: int = 6,
        slack_tol: float = 2e-3,
    ) -> SearchResult:
        """Best assignment under ``limits`` (``{metric or 'sensitivity': bound}``) whose *exact*
        re-lowered cost meets them (:meth:`candidates` with ``k = 1``)."""
        return self.candidates(limits, objective, k=1, max_iters=max_iters, slack_tol=slack_tol)[0]

    def candidates(
        self,
        limits: dict[str, float],
        objective: str = "sensitivity",
        *,
        k: int = 1,
        distance: int = 1,
        max_iters: int = 6,
        slack_tol: float = 2e-3,
    ) -> list[SearchResult]:
        """The ``k`` best assignments (by the objective, best first) under ``limits`` whose exact
        re-lowered cost meets them, pairwise at Hamming distance >= ``distance`` (variables that
        differ; 1: merely distinct).

        Each round solves the MILP on the table, re-lowers the solution (:meth:`exact`) and cuts
        it off. A violation tightens the table-side bound by the table's under-estimate and cuts
        only that point. Phase 1 finds the best point: budget left unused by the re-lowering
        (more than ``slack_tol`` of a bound) is offered back and the MILP re-solved, until the
        next solution is no better or ``max_iters`` solves. Phase 2 (``k > 1``) keeps the bound
        where phase 1 left it: every accepted point cuts its Hamming neighbourhood of radius
        ``distance - 1``, so each solve yields the next best assignment far enough from every
        accepted one (k-best by no-good cuts), until ``k`` points or ``max_iters + 2 (k - 1)``
        more solves."""
        t0 = time.perf_counter()
        if k < 1 or distance < 1:
            raise PrivQuantError("need k >= 1 candidates at Hamming distance >= 1")
        for name in limits:
            if name != "sensitivity" and name not in METRICS:
                raise PrivQuantError(f"unknown limit {name!r}; choose from {list(METRICS)}")
        if objective == "sensitivity" and not any(n != "sensitivity" for n in limits):
            raise PrivQuantError("give a budget (e.g. --budget-mb) to minimize the sensitivity")
        eff = dict(limits)
        exclude: list[tuple[dict[str, int], int]] = []
        found: list[tuple[float, dict[str, int], dict]] = []
        info: dict = {}
        solves = 0

        def check(values) -> tuple[dict, dict]:
            """Limits the exact cost violates ({name: (exact, table)}) and each one's slack."""
            exact = self.exact(values)
            tab = self.table.evaluate(values)[0]
            over, slack = {}, {}
            for name, bound in limits.items():
                if name == "sensitivity":
                    continue
                m = self.metric(name)
                if m.of(exact) > bound * (1 + 1e-12):
                    over[name] = (m.of(exact), m.of(tab))
                else:
                    slack[name] = bound - m.of(exact)
            return over, slack

        def tighten(values, over) -> None:  # the table under-estimated by e - t here
            exclude.append((values, 1))
            for name, (e, t) in over.items():
                eff[name] = min(eff[name], limits[name] - (e - t)) - 1e-9 * abs(limits[name])

        # phase 1: the best point (budget unused by the re-lowering is offered back)
        best: tuple[float, dict[str, int], dict] | None = None
        pool: list[tuple[float, dict[str, int], dict]] = []  # accepted, then superseded
        pending = None  # the solution phase 1 stopped at: phase 2's first
        while solves < max_iters:
            values, info = self.solve(eff, objective, exclude=exclude)
            solves += 1
            if values is None:
                break
            if best is not None and info["objective"] >= best[0] - 1e-12 * abs(best[0]):
                pending = (values, info)
                break  # nothing left under the raised bound beats the best feasible point
            over, slack = check(values)
            if over:
                tighten(values, over)
                continue
            exclude.append((values, 1))
            if best is not None:
                pool.append(best)
            best = (info["objective"], values, dict(info))
            big = {n: v for n, v in slack.items() if v > slack_tol * limits[n]}
            if objective != "sensitivity" or not big:
                break
            for name, v in big.items():
                eff[name] += v
        if best is None:
            self._infeasible(limits, info)
        found.append(best)

        def accept(item) -> None:
            if all(_hamming(item[1], f[1]) >= distance for f in found):
                found.append(item)
                exclude.append((item[1], distance))

        # phase 2: the next best, at distance >= `distance` from every accepted point; points
        # phase 1 accepted and then superseded join in objective order (the MILP excludes them)
        if k > 1:
            exclude.append((best[1], distance))
            pool.sort(key=lambda f: f[0])
            limit2 = solves + max_iters + 2 * (k - 1)
            while len(found) < k:
                if pending is not None:
                    (values, info), pending = pending, None
                elif solves < limit2:
                    values, info = self.solve(eff, objective, exclude=exclude)
                    solves += 1
                else:
                    values = None
                while (
                    pool and len(found) < k and (values is None or pool[0][0] <= info["objective"])
                ):
                    accept(pool.pop(0))
                if values is None or len(found) >= k:
                    break
                if any(_hamming(values, f[1]) < distance for f in found):
                    continue  # inside a neighbourhood cut added after this solve
                over, _ = check(values)
                if over:
                    tighten(values, over)
                    continue
                accept((info["objective"], values, dict(info)))
        seconds = time.perf_counter() - t0
        return [
            self.result(
                values,
                limits,
                objective,
                rank=rank,
                iterations=solves,
                seconds=seconds,
                solver=sinfo,
            )
            for rank, (_, values, sinfo) in enumerate(found)
        ]

    def _infeasible(self, limits: dict[str, float], info: dict):
        parts = []
        for k, bound in limits.items():
            if k == "sensitivity":
                parts.append(f"sensitivity <= {bound:g}")
                continue
            lo, _ = self.minimum(k)
            m = self.metric(k)
            parts.append(
                f"{k} <= {bound:g} {m.unit} (the cheapest assignment needs {lo:.6g} {m.unit})"
            )
        raise PrivQuantError(
            "no bit assignment meets " + " and ".join(parts) + f" [solver: {info.get('message')}]"
        )


def search(
    model: torch.nn.Module | str,
    calib: torch.Tensor,
    *,
    budget_mb: float | None = None,
    limits: dict[str, float] | None = None,
    objective: str = "sensitivity",
    name: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    **kw,
) -> SearchResult:
    """One search: ``budget_mb`` (online+offline MB) and/or ``limits`` (``{"rounds": R, "lan":
    ms, "wan": ms, "mb": MB, "sensitivity": S}``); ``kw`` go to :class:`Searcher` (candidate
    bits, sensitivity method, amortization...). ``model`` may be a name with shipped weights."""
    from privquant import models

    if isinstance(model, str):
        name = name or model
        input_shape = input_shape or models.input_shape(model)
        model = models.load_reference(model)
    name = name or type(model).__name__.lower()
    input_shape = tuple(input_shape or calib.shape[1:])
    lim = dict(limits or {})
    if budget_mb is not None:
        lim["mb"] = budget_mb
    return Searcher(model, name, input_shape, calib, **kw).search(lim, objective)


def _hamming(a: dict[str, int], b: dict[str, int]) -> int:
    return sum(a[v] != b[v] for v in a)


def write_json(obj: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, Cost):
        return o.as_dict()
    if isinstance(o, np.integer | np.floating):
        return o.item()
    raise TypeError(f"not JSON-able: {type(o)}")


__all__ = [
    "METRICS",
    "Metric",
    "ScalarTerm",
    "SearchResult",
    "Searcher",
    "metric",
    "search",
    "sensitivity_terms",
    "single_thread",
    "solve",
    "write_json",
]
