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
* ``lan`` / ``wan``: estimated online latency in ms, ``online_bits / bandwidth + rounds * delay``
  (:data:`NETWORKS`).

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
frozen per bit width (``costtable``); ``Searcher.search`` then lowers the chosen assignment through
``privquant.quantize`` (PTQ, the same calibration images) and reports *that* program's declared
cost -- what ``privquant infer`` measures -- as the prediction. When the re-lowered cost exceeds
the budget (calibration picks slightly different scales for mixed assignments: measured on random
resnet8 assignments, -0.3%..+3% of the cost, mostly under 1%), the assignment is excluded by a
no-good cut, the table-side bound is tightened by the overshoot and the MILP is solved again;
budget left unused by the re-lowering is offered back the same way (a few solves at most).

Fine-tuning (``Searcher.trained_point``, ``privquant quantize --freeze-scales``) is QAT from the
FP32 weights with calibration's step sizes frozen by default: every public integer of the program
and therefore its cost stays exactly the prediction (learning the step sizes too,
``--learn-scales``, gained ~0.2 point of top-1 on resnet8 and moved the cost by up to ~2%).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from privquant.errors import PrivQuantError
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
from privquant.quant.sensitivity import Sensitivity, sensitivity
from privquant.quant.spec import BitAssignment, LayerBits

MB = 8e6  # bits per (decimal) megabyte
DEFAULT_AMORTIZE = 100


@dataclass(frozen=True)
class Network:
    bandwidth_bps: float
    delay_ms: float  # one message hop (a round)


# Estimates for the latency metrics: LAN 1 Gbit/s and 0.5 ms per round, WAN 100 Mbit/s and 40 ms
# per round (common settings in the 2PC inference literature; only online traffic counts).
NETWORKS = {"lan": Network(1e9, 0.5), "wan": Network(1e8, 40.0)}
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
        n = NETWORKS[name]
        return Metric(name, (1e3 / n.bandwidth_bps, 0.0, 0.0, n.delay_ms), "ms")
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
        exclude: list[dict[str, int]],
        *,
        time_limit: float,
        gap: float,
    ) -> tuple[dict[str, int] | None, dict]:
        n = len(self.lb)
        rows = list(self.rows)
        for m, bound in limits:
            expr, const = (self.scalar_expr, self.scalar_const) if m is None else self.linear(m)
            rows.append((expr, -np.inf, bound - const))
        for values in exclude:
            cut = {self.y[v][self.table.domains[v].index(b)]: 1.0 for v, b in values.items()}
            rows.append((cut, -np.inf, len(cut) - 1))
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
            options={"time_limit": time_limit, "mip_rel_gap": gap, "disp": False},
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
    exclude: list[dict[str, int]] | None = None,
    time_limit: float = 120.0,
    gap: float = 1e-6,
    model: _Model | None = None,
) -> tuple[dict[str, int] | None, dict]:
    """Optimal variable values for ``table``: minimize ``objective`` (a Metric, or the scalar
    terms -- the sensitivity -- when None) subject to ``metric <= bound`` for every
    ``(Metric, bound)`` in ``limits`` and ``sum scalars <= max_scalar``. Returns ``(values,
    info)``; ``values`` is None when infeasible (``info['status']`` says why)."""
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
    predicted: Cost  # declared cost of the program privquant.quantize builds (PTQ)
    table_cost: Cost  # the cost table's value (frozen scales)
    sensitivity: float
    limits: dict[str, float]
    objective: str
    metrics: dict[str, float]
    iterations: int
    seconds: float
    solver: dict = field(default_factory=dict)

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
        }


class Searcher:
    """Graph, calibration, cost table and sensitivity of one model; solves for any budget.

    ``model`` is the float ``nn.Module``; ``calib`` the uint8 calibration images given to
    ``privquant.quantize`` (so predictions are exact for what ``quantize`` builds).
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
        batch: int = 1,
        amortize: int = DEFAULT_AMORTIZE,
        include_setup: bool = False,
        seed: int = 0,
        time_limit: float = 120.0,
        progress: bool = False,
    ):
        t0 = time.perf_counter()
        self.model, self.name, self.input_shape = model, name, tuple(input_shape)
        self.calib = calib
        self.backend, self.batch = backend, batch
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
        self._exact: dict[tuple, tuple[Cost, object]] = {}
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

    def quantize(self, values: dict[str, int], **kw):
        import privquant

        return privquant.quantize(
            self.model,
            self.calib,
            self.assignment(values),
            name=self.name,
            input_shape=self.input_shape,
            progress=kw.pop("progress", self.progress),
            **kw,
        )

    def exact(self, values: dict[str, int]) -> Cost:
        """Declared cost of the program ``privquant.quantize`` builds (PTQ) for ``values``."""
        key = tuple(sorted(values.items()))
        if key not in self._exact:
            with single_thread():
                art = self.quantize(values, progress=False)
            total, _ = program_cost(art.program, batch=self.batch, backend=self.backend)
            self._exact[key] = (total, art)
        return self._exact[key][0]

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
        re-lowered cost meets them.

        Each round solves the MILP on the table, re-lowers the solution (``exact``) and cuts it
        off; a violation tightens the table-side bound by the table's under-estimate, unused
        budget (more than ``slack_tol`` of a bound) is offered back. At most ``max_iters``
        solves; the best point whose exact cost meets every limit is returned."""
        t0 = time.perf_counter()
        for k in limits:
            if k != "sensitivity" and k not in METRICS:
                raise PrivQuantError(f"unknown limit {k!r}; choose from {list(METRICS)}")
        if objective == "sensitivity" and not any(k != "sensitivity" for k in limits):
            raise PrivQuantError("give a budget (e.g. --budget-mb) to minimize the sensitivity")
        eff = dict(limits)
        exclude: list[dict[str, int]] = []
        best: tuple[float, dict[str, int], dict] | None = None
        info: dict = {}
        it = 0
        for it in range(1, max_iters + 1):  # noqa: B007
            values, info = self.solve(eff, objective, exclude=exclude)
            if values is None:
                break
            if best is not None and info["objective"] >= best[0] - 1e-12 * abs(best[0]):
                break  # nothing left under the raised bound beats the best feasible point
            exact = self.exact(values)
            tab = self.table.evaluate(values)[0]
            over, slack = {}, {}
            for k, bound in limits.items():
                if k == "sensitivity":
                    continue
                m = self.metric(k)
                if m.of(exact) > bound * (1 + 1e-12):
                    over[k] = (m.of(exact), m.of(tab))
                else:
                    slack[k] = bound - m.of(exact)
            exclude.append(values)
            if over:  # the table under-estimated by e - t here: tighten its bound, cut the point
                for k, (e, t) in over.items():
                    eff[k] = min(eff[k], limits[k] - (e - t)) - 1e-9 * abs(limits[k])
                continue
            best = (info["objective"], values, dict(info))
            if objective != "sensitivity" or all(
                v <= slack_tol * limits[k] for k, v in slack.items()
            ):
                break
            for k, v in slack.items():  # re-lowering left budget unused: offer it back
                eff[k] += v
        if best is None:
            self._infeasible(limits, info)
        _, values, info = best
        exact = self.exact(values)
        return SearchResult(
            self.assignment(values),
            values,
            exact,
            self.table.evaluate(values)[0],
            self.sensitivity_of(values),
            dict(limits),
            objective,
            self.metrics(exact),
            it,
            time.perf_counter() - t0,
            info,
        )

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

    def trained_point(
        self,
        values: dict[str, int],
        *,
        qat_epochs: int = 0,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
        test: tuple[torch.Tensor, torch.Tensor] | None = None,
        qat_lr: float = 1e-4,
        freeze_scales: bool = True,
    ) -> dict:
        """Fine-tune (QAT from the FP32 weights, the same calibration) and evaluate one
        assignment. With ``freeze_scales`` (default) QAT keeps calibration's step sizes, so the
        final program's cost is exactly the search's prediction; otherwise LSQ also learns them
        and the cost moves (typically by under 2%). The returned cost is always the final
        program's declared cost."""
        t0 = time.perf_counter()
        if qat_epochs > 0:
            if train is None:
                raise PrivQuantError("QAT needs training images and labels")
            art = self.quantize(
                values,
                train_images=train[0],
                train_labels=train[1],
                qat_epochs=qat_epochs,
                qat_lr=qat_lr,
                freeze_scales=freeze_scales,
            )
        else:
            self.exact(values)
            art = self._exact[tuple(sorted(values.items()))][1]
        total, _ = program_cost(art.program, batch=self.batch, backend=self.backend)
        acc = art.evaluate(*test, progress=self.progress) if test is not None else {}
        return {
            "cost": total.as_dict(),
            "metrics": self.metrics(total),
            "accuracy": acc,
            "qat_epochs": qat_epochs,
            "qat_scales": "frozen" if freeze_scales or not qat_epochs else "learned",
            "seconds": time.perf_counter() - t0,
            "artifact": art,
        }


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


# ---------------------------------------------------------------------- sweep
def uniform_bits(wbits, abits) -> list[int]:
    """The uniform ``wBaB`` points available in both candidate sets, widest first."""
    return sorted(set(wbits) & set(abits), reverse=True)


def sweep(
    searcher: Searcher,
    *,
    budgets: list[float] | None = None,
    qat_epochs: int = 0,
    freeze_scales: bool = True,
    train=None,
    test=None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Accuracy-vs-MB front: searched assignments at ``budgets`` (default: every uniform point's
    MB and the midpoints between consecutive ones) next to the uniform ``wBaB`` points.

    Every distinct assignment is fine-tuned once (``qat_epochs``) and evaluated on ``test``;
    its MB is the exact declared cost of its final program (after QAT).
    """
    log = log or (lambda s: None)
    mb = searcher.metric("mb")
    uni = []
    for b in uniform_bits(searcher.wbits, searcher.abits):
        v = searcher.uniform_values(b, b)
        uni.append((f"w{b}a{b}", v, mb.of(searcher.exact(v))))
    if budgets is None:
        pts = sorted(x for _, _, x in uni)
        budgets = sorted(set(pts) | {(a + b) / 2 for a, b in itertools.pairwise(pts)})
    searched = []
    for budget in budgets:
        try:
            r = searcher.search({"mb": budget})
        except PrivQuantError as e:
            log(f"budget {budget:.4f} MB: {e}")
            searched.append({"budget_mb": budget, "error": str(e)})
            continue
        log(
            f"budget {budget:.4f} MB -> predicted {r.metrics['mb']:.4f} MB, "
            f"sensitivity {r.sensitivity:.4g} ({r.iterations} solve(s), {r.seconds:.1f} s)"
        )
        searched.append({"budget_mb": budget, "result": r})
    trained: dict[tuple, dict] = {}

    def point(values):
        key = tuple(sorted(values.items()))
        if key not in trained:
            p = searcher.trained_point(
                values, qat_epochs=qat_epochs, train=train, test=test, freeze_scales=freeze_scales
            )
            p.pop("artifact")
            trained[key] = p
            acc = p["accuracy"].get("int_top1")
            log(
                f"  trained: {p['metrics']['mb']:.4f} MB, top-1 "
                f"{'n/a' if acc is None else f'{acc:.2f}'} ({p['seconds']:.0f} s)"
            )
        return trained[key]

    rows = []
    for tag, v, x in uni:
        log(f"uniform {tag}: {x:.4f} MB")
        rows.append({"kind": "uniform", "bits": tag, "ptq_mb": x, **point(v)})
    for s in searched:
        if "error" in s:
            rows.append({"kind": "searched", "budget_mb": s["budget_mb"], "error": s["error"]})
            continue
        r: SearchResult = s["result"]
        log(f"searched at {s['budget_mb']:.4f} MB")
        rows.append(
            {
                "kind": "searched",
                "budget_mb": s["budget_mb"],
                "ptq_mb": r.metrics["mb"],
                "search": r.to_dict(),
                **point(r.values),
            }
        )
    return {
        "model": searcher.name,
        "candidates": {"w": list(searcher.wbits), "a": list(searcher.abits)},
        "sensitivity": searcher.sens.method,
        "qat_epochs": qat_epochs,
        "qat_scales": "frozen" if freeze_scales else "learned",
        "amortize": searcher.amortize,
        "include_setup": searcher.include_setup,
        "points": rows,
        "seconds": dict(searcher.seconds),
    }


def plot_front(table: dict, path: str | Path) -> None:
    """Accuracy (integer program top-1) vs MB: uniform points and the searched front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for kind, style in (("uniform", "s--"), ("searched", "o-")):
        pts = [
            (p["metrics"]["mb"], p["accuracy"].get("int_top1"), p.get("bits"))
            for p in table["points"]
            if p["kind"] == kind and "metrics" in p and p["accuracy"].get("int_top1") is not None
        ]
        pts.sort()
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind)
        for x, y, tag in pts:
            if tag:
                ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    fp = [p["accuracy"].get("fp32_top1") for p in table["points"] if p.get("accuracy")]
    if fp and fp[0] is not None:
        ax.axhline(fp[0], color="gray", lw=0.8, ls=":", label="FP32")
    ax.set_xlabel("communication per inference, online + offline (MB)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{table['model']}: mixed precision vs uniform (QAT {table['qat_epochs']} ep)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    "NETWORKS",
    "Metric",
    "ScalarTerm",
    "SearchResult",
    "Searcher",
    "metric",
    "plot_front",
    "search",
    "sensitivity_terms",
    "solve",
    "sweep",
    "uniform_bits",
]
