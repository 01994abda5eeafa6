"""Validation split, selection among the k best assignments, point cache, sweep checks, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from privquant import cli
from privquant.errors import DataError, PrivQuantError
from privquant.models import load_reference
from privquant.models.calibration import SHIPPED, calibration_indices, load_calibration
from privquant.models.data import (
    VALIDATION_SIZE,
    load_fashion_mnist,
    train_val_split,
    validation_indices,
)
from privquant.quant.pipeline import fakequant_top1
from privquant.quant.search import Searcher
from privquant.quant.selection import EvalData, PointCache, Recipe, Split, select, train_point
from privquant.quant.sweep import checks

SMALL = (2, 4, 8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(torch_single_thread):
    yield


@pytest.fixture(scope="module")
def split():
    try:
        return train_val_split()
    except DataError:
        pytest.skip("needs dataset-fashion-mnist (the full training split)")


@pytest.fixture(scope="module")
def searcher():
    return Searcher(
        load_reference("lenet5"),
        "lenet5",
        (1, 28, 28),
        load_calibration(256),
        wbits=SMALL,
        abits=SMALL,
        iters=8,
    )


# ---------------------------------------------------------------------- validation split
def test_validation_split_is_disjoint_and_deterministic(split):
    (tx, ty), (vx, vy) = split
    images, labels = load_fashion_mnist("train")
    assert len(vx) == VALIDATION_SIZE and len(tx) == len(images) - VALIDATION_SIZE
    val = validation_indices(len(images))
    assert torch.equal(val, validation_indices(len(images)))  # seeded: the same every time
    assert torch.equal(vx, images[val]) and torch.equal(vy, labels[val])
    # disjoint from every calibration image (the shipped set's and any --calib up to 50k)
    calib = set(calibration_indices(len(images)).tolist())
    assert len(calib) == SHIPPED and not calib & set(val.tolist())
    # the fine-tuning part is exactly the complement, in file order
    keep = torch.ones(len(images), dtype=torch.bool)
    keep[val] = False
    assert torch.equal(tx, images[keep]) and torch.equal(ty, labels[keep])
    assert torch.equal(load_calibration(256), images[calibration_indices(len(images))][:256])
    with pytest.raises(DataError, match="validation size"):
        validation_indices(100, 100)


# ---------------------------------------------------------------------- selection
def test_select_takes_the_best_validation_score_and_caches(searcher, split, tmp_path):
    (tx, ty), (vx, vy) = split
    data = EvalData(Split("train", tx, ty), Split("val", vx, vy).head(600))
    s = searcher
    hi = s.metric("mb").of(s.exact(s.uniform_values(8, 8)))
    lo = s.metric("mb").of(s.exact(s.uniform_values(2, 2)))
    budget = lo + (hi - lo) / 3
    cache = PointCache(tmp_path / "cache")
    r, rep = select(s, {"mb": budget}, k=3, recipe=Recipe(), data=data, cache=cache)
    assert rep["found"] == 3 and rep["evaluations"] == 3 and len(rep["candidates"]) == 3
    scores = [c["val_fakequant_top1"] for c in rep["candidates"]]
    for c, cand in zip(rep["candidates"], s.candidates({"mb": budget}, k=3, distance=2)):
        want = fakequant_top1(s.ptq(cand.values)[1].qm, data.val.images, data.val.labels)
        assert c["val_fakequant_top1"] == want and c["mb"] <= budget
    assert scores[r.rank] == max(scores)
    assert scores.index(max(scores)) == r.rank  # ties go to the better proxy (lower rank)
    assert rep["chosen_rank"] == r.rank and r.metrics["mb"] <= budget
    assert rep["seconds"]["enumerate"] > 0 and rep["seconds"]["evaluate"] > 0
    # a fresh cache object on the same directory: nothing is evaluated again
    r2, rep2 = select(
        s, {"mb": budget}, k=3, recipe=Recipe(), data=data, cache=PointCache(tmp_path / "cache")
    )
    assert rep2["evaluations"] == 0 and r2.values == r.values
    assert all(c["cached"] for c in rep2["candidates"])
    # anchors join when they fit the budget (w8a8 does not), and compete on validation
    anchors = {"w2a2": s.uniform_values(2, 2), "w8a8": s.uniform_values(8, 8)}
    r3, rep3 = select(
        s, {"mb": budget}, k=1, recipe=Recipe(), data=data, anchors=anchors, cache=cache
    )
    assert [c["source"] for c in rep3["candidates"]] == ["milp", "w2a2"]
    best = max(rep3["candidates"], key=lambda c: c["val_fakequant_top1"])
    assert rep3["chosen_source"] == best["source"] and rep3["found"] == 1
    assert r3.values == (anchors["w2a2"] if best["source"] == "w2a2" else r1_values(s, budget))
    assert rep3["evaluations"] == 1  # the MILP optimum was cached above
    # k = 1 is the proxy's optimum without any evaluation
    r1, rep1 = select(s, {"mb": budget}, k=1, recipe=Recipe(), data=EvalData())
    assert rep1["evaluations"] == 0 and r1.values == s.search({"mb": budget}).values
    with pytest.raises(PrivQuantError, match="validation split"):
        select(s, {"mb": budget}, k=2, recipe=Recipe(), data=EvalData())


def r1_values(s, budget):
    return s.search({"mb": budget}).values


def test_train_point_reports_both_splits_and_never_trains_on_them(searcher, split):
    (tx, ty), (vx, vy) = split
    data = EvalData(Split("train", tx, ty), Split("val", vx, vy).head(300))
    v = searcher.uniform_values(4, 4)
    p = train_point(searcher, v, Recipe(qat_epochs=1, qat_images=256), data, progress=False)
    assert p["validation"]["n"] == 300 and "int_top1" in p["validation"] and p["accuracy"] == {}
    assert p["cost"] == searcher.exact(v).as_dict()  # frozen step sizes: cost as predicted
    assert p["sensitivity"] == searcher.sensitivity_of(v)
    with pytest.raises(PrivQuantError, match="training images"):
        train_point(searcher, v, Recipe(qat_epochs=1), EvalData())
    with pytest.raises(PrivQuantError, match="QAT"):
        Recipe(qat_epochs=-1)


def test_point_cache_ignores_torn_and_foreign_files(tmp_path):
    c = PointCache(tmp_path)
    c.put("k1", {"key": "k1", "x": 1})
    assert PointCache(tmp_path).get("k1") == {"key": "k1", "x": 1}
    (tmp_path / "k2.json").write_text('{"key": "k2", "x"')  # torn write
    (tmp_path / "k3.json").write_text('{"key": "other"}')
    assert PointCache(tmp_path).get("k2") is None and PointCache(tmp_path).get("k3") is None


# ---------------------------------------------------------------------- checks
def _pt(kind, mb, val, test, **kw):
    acc = {"int_top1": test, "fp32_top1": 92.0}
    return {
        "kind": kind,
        "metrics": {"mb": mb},
        "validation": {"int_top1": val, "fp32_top1": 95.0},
        "accuracy": acc,
        **kw,
    }


def test_checks_choose_on_validation_and_report_test():
    """At a uniform point's MB the searched point compared is the validation-best one among
    those costing no more, even when another one happens to score higher on test."""
    doc = {
        "w8a8_mb": 4.0,
        "min_mb": {"exact": 2.0},
        "points": [
            _pt("uniform", 4.0, 95.0, 92.0, bits="w8a8"),
            _pt("uniform", 2.5, 94.0, 91.0, bits="w4a4"),
            _pt("searched", 2.4, 94.5, 90.8, budget_mb=2.5),  # validation-best
            _pt("searched", 2.3, 94.2, 91.5, budget_mb=2.4),  # test-best: not chosen
            _pt("searched", 2.1, 94.1, 91.1, budget_mb=2.2),
        ],
    }
    ck = checks(doc)
    w4 = next(r for r in ck["dominance"] if r["uniform"] == "w4a4")
    assert w4["searched_mb"] == 2.4 and w4["margin"] == pytest.approx(-0.2) and not w4["ok"]
    assert not ck["front_ok"]
    # 55% of 4.0 = 2.2: the 2.1 MB point is within 1 point of FP32 (91.1 >= 91.0)
    assert ck["target_ok"] and ck["cheapest_within_test"]["mb"] == 2.1
    assert ck["min_share"] == pytest.approx(50.0)
    doc["points"][-1]["accuracy"]["int_top1"] = 90.9
    assert not checks(doc)["target_ok"]


# ---------------------------------------------------------------------- CLI
def test_cli_quick_sweep_with_selection_resumes_from_cache(tmp_path, capsys, split):
    out = tmp_path / "front.json"
    args = ["search", "--model", "lenet5", "--sweep", "--quick", "--wbits", "2,8"]
    args += ["--abits", "2,8", "--budgets", "0.35", "--extra-shares", "80", "--select-k", "2"]
    args += ["--qat-epochs", "1", "--qat-limit", "256", "--select-qat-limit", "128"]
    args += ["--val-limit", "300", "--eval-limit", "300", "--cache", str(tmp_path / "c")]
    args += ["--out", str(out), "--json"]
    assert cli.main(args) == 0
    res = json.loads(capsys.readouterr().out)
    table = json.loads(out.read_text())
    assert res["points"] == table["points"] and (tmp_path / "front.png").stat().st_size > 1000
    assert table["data"] == {"train": 50000, "val": 300, "test": 300}
    srch = [p for p in table["points"] if p["kind"] == "searched"]
    assert len(srch) == 2 and len([p for p in table["points"] if p["kind"] == "uniform"]) == 2
    for p in table["points"]:
        assert {"proxy", "validation", "accuracy", "pct_w8a8", "metrics"} <= set(p)
        assert p["validation"]["n"] == 300 and p["accuracy"]["n"] == 300
        assert p["recipe"]["qat_images"] == 256
    for p in srch:
        assert p["metrics"]["mb"] <= p["budget_mb"] and p["selection"]["k"] == 2
        assert p["selection"]["recipe"]["qat_images"] == 128
    assert table["selection_cost"]["evaluations"] >= 2
    assert {"dominance", "front_ok", "target_ok", "min_share"} <= set(table["checks"])
    # the same run again: every point comes from the cache
    assert cli.main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["selection_cost"]["evaluations"] == 0
    strip = {"cached", "seconds", "selection", "search"}
    for a, b in zip(again["points"], table["points"]):
        assert {k: v for k, v in a.items() if k not in strip} == {
            k: v for k, v in b.items() if k not in strip
        }


def test_cli_selection_errors(tmp_path, capsys):
    out = str(tmp_path / "a.json")
    base = ["search", "--model", "lenet5", "--budget-mb", "0.4", "--out", out]
    assert cli.main([*base, "--select-k", "0"]) == 2
    assert "--select-k" in capsys.readouterr().err
    assert cli.main([*base, "--select-k", "2", "--objective", "mb"]) == 2
    assert "--select-k" in capsys.readouterr().err
    assert cli.main([*base, "--val-size", "0"]) == 2
    assert "--val-size" in capsys.readouterr().err
    assert cli.main([*base, "--extra-shares", "55"]) == 2
    assert "--sweep" in capsys.readouterr().err
    cifar = ["search", "--model", "resnet18-cifar", "--budget-mb", "30", "--select-k", "2"]
    assert cli.main([*cifar, "--out", out]) == 2 and "CIFAR" in capsys.readouterr().err
