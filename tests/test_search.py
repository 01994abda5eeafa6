"""Mixed-precision search: exact cost table, exact MILP, budgets, ties, CLI, measured cost."""

from __future__ import annotations

import contextlib
import itertools
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

import privquant
from privquant import cli
from privquant.cli import _randomize_bn
from privquant.errors import PrivQuantError
from privquant.models import load_reference
from privquant.models.calibration import load_calibration
from privquant.protocols.primitives.cost import Cost
from privquant.quant import costtable
from privquant.quant.costtable import (
    IMPOSSIBLE,
    Atom,
    BitVars,
    CostTable,
    Ring,
    Term,
    build_cost_table,
    frozen_qmodel,
    frozen_scales,
    program_cost,
)
from privquant.quant.graph import capture
from privquant.quant.lower import lower
from privquant.quant.search import ScalarTerm, Searcher, metric, scalar_value, solve
from privquant.quant.selection import EvalData, Recipe, Split, train_point
from privquant.quant.sensitivity import sensitivity
from privquant.quant.spec import BitAssignment, LayerBits

SMALL = (2, 4, 8)
CALIB = 256  # what the CLI gives quantize and search by default


@pytest.fixture(scope="module", autouse=True)
def _one_thread(torch_single_thread):
    yield


@pytest.fixture(scope="module")
def calib():
    return load_calibration(CALIB)


@pytest.fixture(scope="module")
def lenet(calib):
    model = load_reference("lenet5")
    g = capture(model, "lenet5", (1, 28, 28))
    scales = frozen_scales(g, calib, SMALL)
    return model, g, scales, build_cost_table(g, wbits=SMALL, abits=SMALL, scales=scales)


@pytest.fixture(scope="module")
def resnet8(calib):
    """resnet8 with a small fold limit, so that wide rings become MILP ring variables."""
    g = capture(load_reference("resnet8"), "resnet8", (1, 28, 28))
    scales = frozen_scales(g, calib, SMALL)
    keep = costtable.MAX_FACTOR_CONFIGS
    costtable.MAX_FACTOR_CONFIGS = 27
    try:
        table = build_cost_table(g, wbits=SMALL, abits=SMALL, scales=scales)
    finally:
        costtable.MAX_FACTOR_CONFIGS = keep
    return g, scales, table


class TinyRes(nn.Module):
    """Two residual blocks (identity and 1x1-downsample shortcuts), global pooling, linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = (
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
        )
        self.c2, self.bn2, self.relu2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.c3, self.bn3, self.relu3 = nn.Conv2d(4, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()
        self.c4, self.bn4, self.relu4 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.ds, self.bnd = nn.Conv2d(4, 8, 1, 2), nn.BatchNorm2d(8)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.c2(x)) + x)
        z = self.relu3(self.bn3(self.c3(y)))
        z = self.relu4(self.bn4(self.c4(z)) + self.bnd(self.ds(y)))
        return self.fc(torch.flatten(self.pool(z), 1))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    model = TinyRes()
    _randomize_bn(model, 4)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    g = capture(model, "tinyres", (1, 8, 8))
    scales = frozen_scales(g, images, (2, 8))
    keep = costtable.MAX_FACTOR_CONFIGS
    costtable.MAX_FACTOR_CONFIGS = 4
    try:
        table = build_cost_table(g, wbits=(2, 8), abits=(2, 8), scales=scales)
    finally:
        costtable.MAX_FACTOR_CONFIGS = keep
    return model, images, g, scales, table


def random_values(table: CostTable, rng: random.Random) -> dict[str, int]:
    return {v: rng.choice(d) for v, d in table.domains.items()}


def lowered_cost(g, table, scales, values):
    prog = lower(frozen_qmodel(g, table.bitvars.assignment(values), scales))
    return program_cost(prog)


# ---------------------------------------------------------------------- cost table
@pytest.mark.parametrize("which", ["lenet", "resnet8", "tiny"])
def test_table_equals_lowered_program_cost(which, request):
    """Per scope and in total, the table is exactly sum(op_cost) of the lowered program."""
    fx = request.getfixturevalue(which)
    g, scales, table = fx[-3:]
    if which != "lenet":
        assert any(t.ring is not None for t in table.terms), "no ring variable exercised"
    rng = random.Random(7)
    for i in range(5):
        values = random_values(table, rng)
        if i == 0:
            values = {v: 4 if 4 in d else 8 for v, d in table.domains.items()}
        total, scopes = lowered_cost(g, table, scales, values)
        t_total, t_scopes = table.evaluate(values)
        assert t_scopes == scopes
        assert t_total == total


def test_table_exact_for_uniform_quantize(lenet, calib):
    """For uniform wBaB the frozen scales are calibrate's own: table == privquant.quantize."""
    model, _, _, table = lenet
    for b in SMALL:
        art = privquant.quantize(model, calib, f"w{b}a{b}", name="lenet5", progress=False)
        assert (
            table.evaluate_bits(BitAssignment.uniform(LayerBits(b, b)))[0]
            == program_cost(art.program)[0]
        )


def test_ties_come_from_the_graph(resnet8, random_model):
    g, _, table = resnet8
    assert BitVars(g).tie_groups() == sorted(sorted(x) for x in g.tie_groups())
    assert g.tie_groups(), "resnet8 has residual ties"
    g18 = capture(random_model("resnet18-cifar"), "resnet18-cifar", (3, 32, 32))
    assert BitVars(g18).tie_groups() == sorted(sorted(x) for x in g18.tie_groups())
    # one variable per tie group: every assignment the table can express respects the ties
    bits = table.bitvars.assignment(random_values(table, random.Random(1)))
    for group in g.tie_groups():
        assert len({bits.get(n).a for n in group}) == 1
    bad = BitAssignment(layers={n: LayerBits(4, 4) for n in g.layer_names})
    bad.layers[g.tie_groups()[0][0]] = LayerBits(4, 2)
    with pytest.raises(PrivQuantError, match="different activation bits"):
        table.bitvars.values(bad)


# ---------------------------------------------------------------------- MILP vs brute force
def synthetic_table(seed: int) -> tuple[CostTable, list[ScalarTerm]]:
    """Random terms, two rings (max of atoms) and ring-dependent terms with impossible pairs."""
    rng = np.random.default_rng(seed)
    doms = {f"x{i}": (2, 3, 5) for i in range(5)}

    def ring(name, atom_vars):
        atoms = [Atom(vs, rng.integers(10, 16, 3 ** len(vs))) for vs in atom_vars]
        lb = max(int(a.values.min()) for a in atoms)
        dom = tuple(sorted({int(v) for a in atoms for v in a.values if v >= lb}))
        return Ring(name, atoms, dom)

    rings = {
        "r0": ring("r0", [("x0",), ("x1", "x2"), ()]),
        "r1": ring("r1", [("x3",), ("x4", "x0")]),
    }
    terms = [
        Term("a", "t", ("x0", "x1"), rng.integers(0, 1000, (9, 4))),
        Term("b", "t", ("x2",), rng.integers(0, 1000, (3, 4))),
        Term("c", "t", ("x3", "x4"), rng.integers(0, 1000, (9, 4))),
    ]
    for name, vs, r in (("d", ("x1",), "r0"), ("e", ("x3", "x2"), "r1")):
        cost = rng.integers(0, 1000, (3 ** len(vs), len(rings[r].domain), 4))
        cost[0, 0] = IMPOSSIBLE  # a pair that rules some assignments out
        terms.append(Term(name, "t", vs, cost, r))
    table = CostTable("synthetic", doms, terms, rings, {"(seeds)": Cost(0, 0, 7, 1)})
    scalars = [ScalarTerm((f"x{i}",), rng.random(3)) for i in range(5)]
    scalars.append(ScalarTerm(("x1", "x4"), rng.random(9)))
    return table, scalars


def brute_force(table, scalars, objective, limits, max_scalar=None):
    best = None
    for cfg in itertools.product(*table.domains.values()):
        values = dict(zip(table.domains, cfg))
        try:
            cost = table.evaluate(values)[0]
        except PrivQuantError:
            continue
        s = scalar_value(scalars, table, values)
        if any(m.of(cost) > b + 1e-9 for m, b in limits):
            continue
        if max_scalar is not None and s > max_scalar + 1e-12:
            continue
        val = s if objective is None else objective.of(cost)
        if best is None or val < best:
            best = val
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_is_optimal_on_synthetic_tables(seed):
    table, scalars = synthetic_table(seed)
    mb, rounds = metric("mb"), metric("rounds")
    costs = []
    for cfg in itertools.product(*table.domains.values()):
        with contextlib.suppress(PrivQuantError):
            costs.append(table.evaluate(dict(zip(table.domains, cfg)))[0])
    assert 0 < len(costs) < 3**5, "some assignments must be impossible"
    xs = sorted(mb.of(c) for c in costs)
    for q in (0.05, 0.3, 0.7):
        bound = xs[int(q * len(xs))]
        want = brute_force(table, scalars, None, [(mb, bound)])
        values, info = solve(table, scalars, limits=[(mb, bound)])
        assert values is not None
        assert mb.of(table.evaluate(values)[0]) <= bound + 1e-12
        assert info["objective"] == pytest.approx(want, rel=1e-9, abs=1e-12)
    # a cost objective under a sensitivity bound, plus a rounds constraint
    smax = float(np.median([t.values.max() for t in scalars])) * 3
    rmax = sorted(c.rounds for c in costs)[len(costs) // 2]
    want = brute_force(table, scalars, mb, [(rounds, rmax)], max_scalar=smax)
    values, info = solve(table, scalars, objective=mb, limits=[(rounds, rmax)], max_scalar=smax)
    assert (values is None) == (want is None)
    if want is not None:
        assert info["objective"] == pytest.approx(want, rel=1e-9)
    # infeasible
    values, info = solve(table, scalars, limits=[(mb, xs[0] * 0.5)])
    assert values is None


def test_milp_is_optimal_on_a_real_residual_graph(tiny):
    """TinyRes (10 variables, candidates {2, 8}, ring variables forced): MILP == brute force."""
    _, _, _, _, table = tiny
    assert any(t.ring is not None for t in table.terms)
    rng = np.random.default_rng(5)
    scalars = [ScalarTerm((v,), np.sort(rng.random(2))[::-1].copy()) for v in table.domains]
    mb = metric("mb")
    xs = sorted(
        mb.of(table.evaluate(dict(zip(table.domains, c)))[0])
        for c in itertools.product(*table.domains.values())
    )
    for q in (0.1, 0.5, 0.9):
        bound = xs[int(q * len(xs))]
        want = brute_force(table, scalars, None, [(mb, bound)])
        values, info = solve(table, scalars, limits=[(mb, bound)])
        assert info["objective"] == pytest.approx(want, rel=1e-9)
        assert mb.of(table.evaluate(values)[0]) <= bound
    values, info = solve(table, scalars, objective=mb)
    assert info["objective"] == pytest.approx(xs[0], rel=1e-12)


# ---------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def lenet_searcher(calib):
    return Searcher(
        load_reference("lenet5"), "lenet5", (1, 28, 28), calib, wbits=SMALL, abits=SMALL
    )


def test_search_respects_budget_and_predicts_exactly(lenet_searcher, calib):
    s = lenet_searcher
    hi = s.metric("mb").of(s.exact(s.uniform_values(8, 8)))
    lo = s.metric("mb").of(s.exact(s.uniform_values(2, 2)))
    budget = (hi + lo) / 2
    r = s.search({"mb": budget})
    assert r.metrics["mb"] <= budget
    # prediction == the declared cost of what quantize builds from the written assignment
    art = privquant.quantize(
        load_reference("lenet5"),
        calib,
        BitAssignment.from_dict(r.assignment.to_dict()),
        name="lenet5",
        progress=False,
    )
    assert program_cost(art.program)[0] == r.predicted
    # a tighter rounds limit on top is respected too
    r2 = s.search({"mb": budget, "rounds": r.predicted.rounds - 1})
    assert r2.predicted.rounds <= r.predicted.rounds - 1 and r2.metrics["mb"] <= budget
    assert r2.sensitivity >= r.sensitivity - 1e-12
    # latency budget on its own
    r3 = s.search({"wan": s.metric("wan").of(r.predicted)})
    assert r3.metrics["wan"] <= s.metric("wan").of(r.predicted)


def test_infeasible_budget_is_a_clear_error(lenet_searcher):
    with pytest.raises(
        PrivQuantError, match=r"no bit assignment meets mb <= 0\.01 MB \(the cheapest"
    ):
        lenet_searcher.search({"mb": 0.01})
    with pytest.raises(PrivQuantError, match="give a budget"):
        lenet_searcher.search({})


def test_sensitivity_estimates(lenet):
    _, g, scales, _ = lenet
    calib = load_calibration(64)
    s1 = sensitivity("hessian", g, scales, calib, wbits=SMALL, abits=SMALL, iters=8, seed=3)
    s2 = sensitivity("hessian", g, scales, calib, wbits=SMALL, abits=SMALL, iters=8, seed=3)
    assert s1.weights == s2.weights and s1.acts == s2.acts  # fixed seed: reproducible
    assert all(v >= 0 for v in s1.traces.values())  # logit-space Hutchinson is non-negative
    for d in [*s1.weights.values(), *s1.acts.values()]:
        assert d[2] >= d[4] >= d[8] >= 0
    m = sensitivity("measured", g, scales, calib, wbits=SMALL, abits=SMALL)
    assert set(m.weights) == set(g.layer_names) and all(d[8] == 0 for d in m.weights.values())
    assert all(v >= 0 for d in m.acts.values() for v in d.values())


# ---------------------------------------------------------------------- CLI
def test_cli_search_then_quantize(tmp_path, capsys):
    out = tmp_path / "a.json"
    args = ["search", "--model", "lenet5", "--budget-mb", "0.42", "--wbits", "2,4,8"]
    args += ["--abits", "2,4,8", "--eval-limit", "50", "--val-limit", "50"]
    args += ["--out", str(out), "--json"]
    assert cli.main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["predicted_metrics"]["mb"] <= 0.42
    assert res["trained"]["accuracy"]["n"] == 50
    pq = tmp_path / "a.pq"
    assert (
        cli.main(["quantize", "--model", "lenet5", "--assignment", str(out), "--out", str(pq)]) == 0
    )
    art = privquant.load(pq)
    assert program_cost(art.program)[0].as_dict() == res["predicted"]
    assert art.bits.to_dict()["layers"] == res["assignment"]["layers"]


def test_cli_search_errors(tmp_path, capsys):
    out = str(tmp_path / "a.json")
    assert (
        cli.main(
            [
                "search",
                "--model",
                "lenet5",
                "--budget-mb",
                "0.001",
                "--wbits",
                "2,8",
                "--abits",
                "2,8",
                "--out",
                out,
                "--json",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no bit assignment meets" in err[0] and "cheapest" in err[0]
    assert cli.main(["search", "--model", "lenet5", "--out", out]) == 2
    assert "--budget-mb" in capsys.readouterr().err
    assert (
        cli.main(["search", "--model", "lenet5", "--budget-mb", "1", "--wbits", "9", "--out", out])
        == 2
    )
    assert "out of range" in capsys.readouterr().err


def test_cli_sweep_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "front.json"
    args = ["search", "--model", "lenet5", "--sweep", "--wbits", "2,8", "--abits", "2,8"]
    args += ["--budgets", "0.3,0.4", "--eval-limit", "40", "--val-limit", "40"]
    args += ["--out", str(out), "--json"]
    assert cli.main(args) == 0
    res = json.loads(capsys.readouterr().out)
    table = json.loads(out.read_text())
    assert (tmp_path / "front.png").stat().st_size > 1000
    kinds = [p["kind"] for p in table["points"]]
    assert kinds.count("uniform") == 2 and kinds.count("searched") == 2
    for p in table["points"]:
        if p["kind"] == "searched" and "error" not in p:
            assert p["metrics"]["mb"] <= p["budget_mb"]
    assert res["points"] == table["points"]


# ---------------------------------------------------------------------- measured
@pytest.mark.multiprocess
def test_predicted_cost_equals_measured(lenet_searcher, tmp_path):
    """A searched lenet5, quantized and run by three real processes: measured == predicted."""
    from privquant.launch import infer_local
    from privquant.models.data import load_sample

    s = lenet_searcher
    hi = s.metric("mb").of(s.exact(s.uniform_values(8, 8)))
    lo = s.metric("mb").of(s.exact(s.uniform_values(2, 2)))
    r = s.search({"mb": lo + (hi - lo) / 3})
    art = privquant.quantize(
        load_reference("lenet5"),
        load_calibration(CALIB),
        r.assignment,
        name="lenet5",
        progress=False,
    )
    path = tmp_path / "searched.pq"
    art.save(path)
    images, _ = load_sample()
    res = infer_local(path, images[:1])
    rep = res["report"]
    assert res["identical"] and rep.all_match
    t = rep.total
    # session control (handshake, session messages) is not a protocol cost: no declaration
    control = sum(x.setup_bits for x in rep.layers if not x.declared)
    assert {x.name for x in rep.layers if not x.declared} == {"(handshake)", "(session)"}
    assert t["online_bits"] == r.predicted.online_bits
    assert t["offline_bits"] == r.predicted.offline_bits
    assert t["setup_bits"] - control == r.predicted.setup_bits
    assert t["rounds"] <= r.predicted.rounds  # summed per-layer rounds bound the session depth
    assert sum(x.rounds for x in rep.layers) == r.predicted.rounds


def test_sensitivity_terms_follow_derived_quantizers(tiny):
    """A quantizer no layer reads (the last residual add) takes the max of its sources' bits."""
    from privquant.quant.search import sensitivity_terms
    from privquant.quant.sensitivity import Sensitivity

    table = tiny[-1]
    bv = table.bitvars
    assert bv.derived, "TinyRes has a derived quantizer"
    sens = Sensitivity(
        "test",
        {n: {2: 1.0 + i, 8: 0.0} for i, n in enumerate(bv.layers)},
        {q: {2: 10.0 * (i + 1), 8: 0.5} for i, q in enumerate([*bv.free, *bv.derived])},
    )
    terms = sensitivity_terms(table, sens)
    values = random_values(table, random.Random(3))
    qbits = {q: bv.quantizer_bits(values, q) for q in [*bv.free, *bv.derived]}
    want = sens.total({n: values[f"w:{n}"] for n in bv.layers}, qbits)
    assert scalar_value(terms, table, values) == pytest.approx(want)
    json.dumps(table.to_dict())  # `search --table` output is plain JSON


def test_qat_with_frozen_scales_keeps_the_predicted_cost(lenet_searcher, sample):
    """Fine-tuning a searched assignment with frozen step sizes leaves its cost exactly as
    predicted (only weights and biases move); learned step sizes may move it."""
    s = lenet_searcher
    r = s.search({"mb": s.metric("mb").of(s.exact(s.uniform_values(4, 4)))})
    images, labels = sample
    data = EvalData(train=Split("train", images[:256], labels[:256]))
    p = train_point(s, r.values, Recipe(qat_epochs=1), data, keep=True, progress=False)
    assert p["qat_scales"] == "frozen"
    assert Cost(**p["cost"]) == r.predicted
    ptq, qat = s.ptq(r.values)[1].state(), p["quantized"].state()
    assert not torch.equal(qat["weights.fc1"], ptq["weights.fc1"])
    assert torch.equal(qat["a_scales.conv1"], ptq["a_scales.conv1"])


# ---------------------------------------------------------------------- k best
def hamming(a: dict[str, int], b: dict[str, int]) -> int:
    return sum(a[v] != b[v] for v in a)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dist", [1, 2])
def test_k_best_by_no_good_cuts_equals_brute_force(seed, dist):
    """Re-solving with the accepted points' Hamming neighbourhoods cut off yields, in order, the
    best remaining assignment at distance >= dist from every accepted one (brute force)."""
    table, scalars = synthetic_table(seed)
    mb = metric("mb")
    feasible = []
    for cfg in itertools.product(*table.domains.values()):
        values = dict(zip(table.domains, cfg))
        with contextlib.suppress(PrivQuantError):
            feasible.append((mb.of(table.evaluate(values)[0]), values))
    bound = sorted(x for x, _ in feasible)[len(feasible) // 2]
    pool = [(scalar_value(scalars, table, v), v) for x, v in feasible if x <= bound]
    want, got = [], []
    for _ in range(4):
        rest = [p for p in pool if all(hamming(p[1], w) >= dist for _, w in want)]
        want.append(min(rest, key=lambda p: p[0]))
        values, info = solve(
            table, scalars, limits=[(mb, bound)], exclude=[(v, dist) for _, v in got]
        )
        got.append((info["objective"], values))
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], rel=1e-9)
    assert [g[1] for g in got] == [w[1] for w in want]
    for i, j in itertools.combinations(range(4), 2):
        assert hamming(got[i][1], got[j][1]) >= dist


def test_candidates_are_the_k_best_under_the_exact_budget(lenet_searcher):
    s = lenet_searcher
    hi = s.metric("mb").of(s.exact(s.uniform_values(8, 8)))
    lo = s.metric("mb").of(s.exact(s.uniform_values(2, 2)))
    budget = (hi + lo) / 2
    cs = s.candidates({"mb": budget}, k=4, distance=2)
    assert [c.rank for c in cs] == [0, 1, 2, 3]
    assert [c.sensitivity for c in cs] == sorted(c.sensitivity for c in cs)
    for c in cs:
        assert c.metrics["mb"] <= budget and c.predicted == s.exact(c.values)
    for a, b in itertools.combinations(cs, 2):
        assert hamming(a.values, b.values) >= 2
    assert cs[0].values == s.search({"mb": budget}).values
    with pytest.raises(PrivQuantError, match="k >= 1"):
        s.candidates({"mb": budget}, k=0)


def test_latency_metric_is_the_baselines_model():
    """One latency model: the search's lan/wan metrics are baselines.latency.estimate (its
    networks, rounds * RTT/2) without the measured compute term."""
    from privquant.baselines import latency

    c = Cost(online_bits=123_456_789, offline_bits=5, setup_bits=7, rounds=61)
    for name in ("lan", "wan"):
        est = latency.estimate(0.0, c.online_bits, c.rounds, latency.NETWORKS[name])
        assert metric(name).of(c) == pytest.approx(1e3 * est["seconds"], rel=1e-12)


def test_search_does_not_import_the_public_api():
    """quant.search builds programs through quant.pipeline, not through privquant.quantize."""
    import ast
    import inspect

    from privquant.quant import search as S

    for node in ast.walk(ast.parse(inspect.getsource(S))):
        if isinstance(node, ast.Import):
            assert all(a.name != "privquant" for a in node.names)
        if isinstance(node, ast.ImportFrom) and node.module == "privquant":
            assert all(a.name not in ("quantize", "quantized") for a in node.names)
