"""The search's cost table under the dealer-free provider: every bit exactly what the program the
lowering builds declares (HE public keys included, as a per-session term), rounds an upper bound
of the declared per-scope clock model."""

from __future__ import annotations

import random

from privquant.costs import program_cost
from privquant.models import load_reference
from privquant.models.calibration import load_calibration
from privquant.quant.costtable import build_cost_table, frozen_qmodel, frozen_scales
from privquant.quant.graph import capture
from privquant.quant.lower import lower


def test_ot_cost_table_bits_exact_rounds_bounded():
    g = capture(load_reference("lenet5"), "lenet5", (1, 28, 28))
    scales = frozen_scales(g, load_calibration(64), (4, 8))
    tab = build_cost_table(g, wbits=(4, 8), abits=(4, 8), scales=scales, preprocessing="ot")
    assert tab.preprocessing == "ot"
    rnd = random.Random(1)
    seen_he = False
    for _ in range(4):
        v = {k: rnd.choice(d) for k, d in tab.domains.items()}
        total, per = tab.evaluate(v)
        prog = lower(frozen_qmodel(g, tab.bitvars.assignment(v), scales))
        ref, rper = program_cost(prog, preprocessing="ot")
        assert set(per) == set(rper)
        for f in ("online_bits", "offline_bits", "setup_bits"):
            assert getattr(total, f) == getattr(ref, f), f
        assert ref.rounds <= total.rounds <= ref.rounds + len(per)
        seen_he |= "he.keys" in per
    assert seen_he, "some assignment uses HE linear layers (their keys are costed)"
    # the dealer table of the same graph has no HE term and different (cheaper) offline bits
    dealer = build_cost_table(g, wbits=(4, 8), abits=(4, 8), scales=scales)
    dt, dper = dealer.evaluate(v)
    assert "he.keys" not in dper and dt.offline_bits < total.offline_bits


def test_cli_search_under_the_dealer_free_provider(tmp_path, capsys):
    """search --preprocessing ot: the budget is in the dealer-free costs, and the prediction is
    exactly what the quantized artifact declares under the same provider."""
    import json

    import privquant
    from privquant import cli

    lo = program_cost(_uniform(2), preprocessing="ot")[0]
    hi = program_cost(_uniform(8), preprocessing="ot")[0]
    mb = lambda c: (c.online_bits + c.offline_bits) / 8e6  # noqa: E731
    budget = round((mb(lo) + mb(hi)) / 2, 3)
    assert budget < mb(hi)  # a dealer-mode budget of this size would admit w8a8: not here
    out = tmp_path / "a.json"
    args = ["search", "--model", "lenet5", "--budget-mb", str(budget), "--wbits", "2,8"]
    args += ["--abits", "2,8", "--preprocessing", "ot", "--hutchinson-iters", "4"]
    args += ["--eval-limit", "20", "--out", str(out), "--json"]
    assert cli.main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["preprocessing"] == "ot" and res["predicted_metrics"]["mb"] <= budget
    pq = tmp_path / "a.pq"
    assert (
        cli.main(["quantize", "--model", "lenet5", "--assignment", str(out), "--out", str(pq)]) == 0
    )
    capsys.readouterr()
    got = program_cost(privquant.load(pq).program, preprocessing="ot")[0]
    assert got.as_dict() == res["predicted"]


def _uniform(b: int):
    import privquant

    return privquant.quantize(
        load_reference("lenet5"), load_calibration(64), f"w{b}a{b}", name="lenet5", progress=False
    ).program
