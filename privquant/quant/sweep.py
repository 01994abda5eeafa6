"""Accuracy-vs-communication front: searched assignments next to the uniform ``wBaB`` points.

:func:`sweep` runs, on one :class:`~privquant.quant.search.Searcher`:

* every uniform point ``wBaB`` (B in both candidate sets);
* a search at every budget (default: each uniform point's MB and the midpoints between
  consecutive ones, plus ``extra_budgets``): the k best MILP assignments -- with
  ``anchor_uniform`` also the widest uniform point that fits --, the one with the best
  validation top-1 after the selection recipe (``quant.selection.select``; ``k = 1`` and no
  anchor: the proxy's optimum);
* every distinct point then fine-tuned with the same final recipe (QAT with frozen step sizes:
  the cost stays exactly the prediction) and scored on the validation and test splits.

Each point reports its proxy score (the summed sensitivity the MILP minimizes), validation and
test top-1 (FP32, fake-quant, integer program), its predicted MB (= the final program's declared
cost) and its share of uniform w8a8's MB. :func:`checks` derives the targets without looking at
the test split to choose anything: at each uniform point's MB, the searched point deployed is the
one with the best *validation* top-1 among those that cost no more; its *test* top-1 is then
compared with the uniform point's. :func:`markdown` and :func:`plot_front` render the result.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

from privquant.errors import PrivQuantError
from privquant.quant.search import Searcher
from privquant.quant.selection import EvalData, PointCache, Recipe, select, train_point

TOLERANCE = 0.1  # points: the searched front may trail a uniform point by at most this
TARGET_SHARE = 0.55  # of uniform w8a8's MB ...
TARGET_DROP = 1.0  # ... within this many points of FP32


def uniform_bits(wbits, abits) -> list[int]:
    """The uniform ``wBaB`` points available in both candidate sets, widest first."""
    return sorted(set(wbits) & set(abits), reverse=True)


def default_budgets(uniform_mb: list[float]) -> list[float]:
    pts = sorted(uniform_mb)
    return sorted(set(pts) | {(a + b) / 2 for a, b in itertools.pairwise(pts)})


def sweep(
    searcher: Searcher,
    *,
    recipe: Recipe,
    data: EvalData,
    budgets: list[float] | None = None,
    extra_budgets: tuple[float, ...] = (),
    select_k: int = 1,
    select_recipe: Recipe | None = None,
    distance: int = 2,
    anchor_uniform: bool = False,
    cache: PointCache | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The front (see the module docstring); returns a JSON-able dict with ``points``,
    ``checks`` and timings."""
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    mb = searcher.metric("mb")
    select_recipe = select_recipe or recipe
    uni = []
    for b in uniform_bits(searcher.wbits, searcher.abits):
        v = searcher.uniform_values(b, b)
        uni.append((f"w{b}a{b}", v, mb.of(searcher.exact(v))))
    ref = next((x for tag, _, x in uni if tag == "w8a8"), max((x for *_, x in uni), default=None))
    lo, vmin = searcher.minimum("mb")
    lo_exact = mb.of(searcher.exact(vmin))
    if budgets is None:
        budgets = default_budgets([x for *_, x in uni])
    budgets = sorted(set(budgets) | set(extra_budgets), reverse=True)

    searched = []
    t_sel = time.perf_counter()
    for budget in budgets:
        log(f"budget {budget:.4f} MB ({100 * budget / ref:.1f}% of w8a8)" if ref else "")
        # anchor: the widest uniform point that fits the budget
        fits = [(x, tag, v) for tag, v, x in uni if x <= budget * (1 + 1e-12)]
        anchors = {max(fits)[1]: max(fits)[2]} if anchor_uniform and fits else None
        try:
            r, sel = select(
                searcher,
                {"mb": budget},
                k=select_k,
                recipe=select_recipe,
                data=data,
                distance=distance,
                anchors=anchors,
                cache=cache,
                log=log,
            )
        except PrivQuantError as e:
            log(f"  {e}")
            searched.append({"kind": "searched", "budget_mb": budget, "error": str(e)})
            continue
        log(
            f"  -> rank {r.rank} ({sel['chosen_source']}) of {sel['found']}: "
            f"{r.metrics['mb']:.4f} MB, proxy "
            f"{r.sensitivity:.4g} ({r.iterations} solve(s); selection "
            f"{sum(sel['seconds'].values()):.0f} s, {sel['evaluations']} evaluation(s))"
        )
        searched.append({"budget_mb": budget, "result": r, "selection": sel})
    t_sel = time.perf_counter() - t_sel

    t_fin = time.perf_counter()

    def final(values) -> dict:
        p = train_point(searcher, values, recipe, data, cache=cache)
        acc, val = p["accuracy"].get("int_top1"), p["validation"].get("int_top1")
        took = "cached" if p["cached"] else f"{sum(p['seconds'].values()):.0f} s"
        log(f"  final: {p['metrics']['mb']:.4f} MB, validation {_f(val)}, test {_f(acc)} ({took})")
        return {k: v for k, v in p.items() if k not in ("key",)}

    rows = []
    for tag, v, x in uni:
        log(f"uniform {tag}: {x:.4f} MB")
        rows.append(
            {
                "kind": "uniform",
                "bits": tag,
                "ptq_mb": x,
                "proxy": searcher.sensitivity_of(v),
                "assignment": searcher.assignment(v).to_dict()["layers"],
                **final(v),
            }
        )
    for s in searched:
        if "error" in s:
            rows.append(s)
            continue
        r = s["result"]
        log(f"searched at {s['budget_mb']:.4f} MB")
        rows.append(
            {
                "kind": "searched",
                "budget_mb": s["budget_mb"],
                "ptq_mb": r.metrics["mb"],
                "proxy": r.sensitivity,
                "assignment": r.assignment.to_dict()["layers"],
                "search": r.to_dict(),
                "selection": s["selection"],
                **final(r.values),
            }
        )
    t_fin = time.perf_counter() - t_fin
    for p in rows:
        if "metrics" in p and ref:
            p["pct_w8a8"] = 100.0 * p["metrics"]["mb"] / ref
    sels = [p["selection"] for p in rows if "selection" in p]
    doc = {
        "model": searcher.name,
        "candidates": {"w": list(searcher.wbits), "a": list(searcher.abits)},
        "sensitivity": searcher.sens.method,
        "recipe": recipe.to_dict(),
        "recipe_label": recipe.label(),
        "select_k": select_k,
        "distance": distance,
        "anchor_uniform": anchor_uniform,
        "select_recipe": select_recipe.to_dict(),
        "select_recipe_label": select_recipe.label(),
        "data": data.describe(),
        "amortize": searcher.amortize,
        "include_setup": searcher.include_setup,
        "w8a8_mb": ref,
        "min_mb": {"table": lo, "exact": lo_exact, "assignment": searcher.assignment(vmin)},
        "points": rows,
        "selection_cost": {
            "seconds": sum(sum(s["seconds"].values()) for s in sels),
            "evaluations": sum(s["evaluations"] for s in sels),
            "budgets": len(sels),
            "milp_solves": sum(s["enumeration"]["solves"] for s in sels),
            "milp_seconds": sum(s["enumeration"]["seconds"] for s in sels),
            "resumed_from_cache": sum(s["enumeration"]["cached"] for s in sels),
        },
        "seconds": {
            **searcher.seconds,
            "select": t_sel,
            "final_points": t_fin,
            "sweep": time.perf_counter() - t0,
        },
    }
    doc["min_mb"]["assignment"] = doc["min_mb"]["assignment"].to_dict()["layers"]
    doc["checks"] = checks(doc)
    return doc


def _top1(p: dict, split: str) -> float | None:
    return p.get("validation" if split == "val" else "accuracy", {}).get("int_top1")


def checks(doc: dict) -> dict:
    """Targets, decided on validation and reported on test (see the module docstring)."""
    pts = [p for p in doc["points"] if "metrics" in p]
    uni = sorted((p for p in pts if p["kind"] == "uniform"), key=lambda p: -p["metrics"]["mb"])
    srch = [p for p in pts if p["kind"] == "searched"]
    out: dict = {"tolerance": TOLERANCE, "target_share": TARGET_SHARE, "target_drop": TARGET_DROP}
    if not pts or _top1(pts[0], "test") is None:
        return out
    fp32 = pts[0]["accuracy"]["fp32_top1"]
    fp32_val = pts[0]["validation"].get("fp32_top1")
    out.update(fp32_test=fp32, fp32_val=fp32_val)
    dom = []
    for u in uni:
        x = u["metrics"]["mb"]
        cand = [p for p in srch if p["metrics"]["mb"] <= x * (1 + 1e-12)]
        row = {"uniform": u["bits"], "mb": x, "uniform_test": _top1(u, "test")}
        row["uniform_val"] = _top1(u, "val")
        if cand:
            key = (lambda p: (_top1(p, "val"), -p["metrics"]["mb"])) if fp32_val else None
            pick = max(cand, key=key or (lambda p: -p["metrics"]["mb"]))
            row.update(
                searched_budget=pick["budget_mb"],
                searched_mb=pick["metrics"]["mb"],
                searched_val=_top1(pick, "val"),
                searched_test=_top1(pick, "test"),
                margin=_top1(pick, "test") - row["uniform_test"],
            )
            row["ok"] = row["margin"] >= -TOLERANCE - 1e-9
        else:
            row["ok"] = False
        dom.append(row)
    out["dominance"] = dom
    out["front_ok"] = bool(dom) and all(r["ok"] for r in dom)
    ref = doc.get("w8a8_mb")
    if ref:
        limit = TARGET_SHARE * ref
        out["target_mb"] = limit
        out["min_share"] = 100.0 * doc["min_mb"]["exact"] / ref
        within = [p for p in srch if _top1(p, "test") >= fp32 - TARGET_DROP]
        if within:
            c = min(within, key=lambda p: p["metrics"]["mb"])
            out["cheapest_within_test"] = _brief(c)
        if fp32_val is not None:
            within_v = [p for p in srch if _top1(p, "val") >= fp32_val - TARGET_DROP]
            if within_v:
                out["cheapest_within_val"] = _brief(min(within_v, key=lambda p: p["metrics"]["mb"]))
        under = [p for p in srch if p["metrics"]["mb"] <= limit * (1 + 1e-12)]
        if under:
            key = (lambda p: _top1(p, "val")) if fp32_val is not None else None
            out["best_under_target"] = _brief(max(under, key=key or (lambda p: _top1(p, "test"))))
        out["target_ok"] = any(p["metrics"]["mb"] <= limit * (1 + 1e-12) for p in within)
    return out


def _brief(p: dict) -> dict:
    return {
        "budget_mb": p.get("budget_mb"),
        "mb": p["metrics"]["mb"],
        "pct_w8a8": p.get("pct_w8a8"),
        "val": _top1(p, "val"),
        "test": _top1(p, "test"),
    }


# ---------------------------------------------------------------------- rendering
def _f(x, fmt=".2f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(
    doc: dict, *, command: str = "", plot: str | None = None, extra: list[str] | None = None
) -> str:
    """The sweep as a markdown report (bench/search_resnet8.md)."""
    ck = doc.get("checks", {})
    ref = doc.get("w8a8_mb")
    lines = [f"# Mixed-precision search: {doc['model']} on Fashion-MNIST", ""]
    d = doc["data"]
    lines.append(
        (f"Generated by `{command}`. " if command else "")
        + f"Candidates w {doc['candidates']['w']}, a {doc['candidates']['a']}; proxy: "
        f"{doc['sensitivity']} sensitivity (the MILP's objective). Every point: "
        f"{doc['recipe_label']} (fine-tuning images: {_f(d.get('train'), 'd')} training images, "
        f"validation split excluded), then top-1 on the validation split ({_f(d.get('val'), 'd')} "
        f"training images never used for calibration or QAT) and on the test split "
        f"({_f(d.get('test'), 'd')} images). Searched points: the best of the "
        f"{doc['select_k']} best MILP assignments (pairwise Hamming distance >= "
        f"{doc['distance']})"
        + (
            " and the widest uniform point that fits (an anchor)"
            if doc.get("anchor_uniform")
            else ""
        )
        + f" by validation fake-quant top-1 after {doc['select_recipe_label']}. "
        f"MB = online + offline bits / 8e6 per inference (batch 1): the declared cost of the "
        f"point's final program (step sizes frozen: exactly the search's prediction, what "
        f"`privquant infer` measures)."
    )
    lines += ["", f"![front]({plot})", ""] if plot else [""]
    lines.append(
        "| point | budget MB | MB | % of w8a8 | proxy | val top-1 | test top-1 int | "
        "test fake-quant | Δ test vs FP32 | chosen rank / k |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    fp32 = ck.get("fp32_test")
    pts = [p for p in doc["points"] if "metrics" in p]
    uni = sorted((p for p in pts if p["kind"] == "uniform"), key=lambda p: -p["metrics"]["mb"])
    srch = sorted((p for p in pts if p["kind"] == "searched"), key=lambda p: -p["budget_mb"])
    for p in uni + srch:
        name = p["bits"] if p["kind"] == "uniform" else "searched"
        sel = p.get("selection")
        rank = ""
        if sel:
            src = sel.get("chosen_source", "milp")
            rank = f"{sel['chosen_rank']} / {sel['found']}" + ("" if src == "milp" else f" ({src})")
        t = _top1(p, "test")
        lines.append(
            f"| {name} | {_f(p.get('budget_mb'), '.4f')} | {p['metrics']['mb']:.4f} | "
            f"{_f(p.get('pct_w8a8'), '.1f')} | {p['proxy']:.4g} | {_f(_top1(p, 'val'))} | "
            f"{_f(t)} | {_f(p['accuracy'].get('fakequant_top1'))} | "
            f"{_f(None if t is None or fp32 is None else t - fp32, '+.2f')} | {rank} |"
        )
    for p in doc["points"]:
        if "error" in p:
            lines.append(f"| searched | {p['budget_mb']:.4f} | - | | | | | | | {p['error']} |")
    if fp32 is not None:
        lines += [
            "",
            f"FP32: test {fp32:.2f}%, validation {_f(ck.get('fp32_val'))}% (the "
            "shipped FP32 weights were trained on all 60k training images, validation "
            "included, so validation top-1 is higher than test top-1 everywhere).",
        ]
    lines += ["", "## Checks", ""]
    if "dominance" in ck:
        lines.append(
            f"Front vs uniform (tolerance {TOLERANCE}): at each uniform point's MB, the searched "
            "point deployed is the one with the best *validation* top-1 among those costing no "
            "more; its *test* top-1 is compared with the uniform point's.\n"
        )
        lines.append(
            "| uniform | MB | test top-1 | searched pick (budget) | MB | val | test | margin | ok |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in ck["dominance"]:
            lines.append(
                f"| {r['uniform']} | {r['mb']:.4f} | {_f(r['uniform_test'])} | "
                f"{_f(r.get('searched_budget'), '.4f')} | {_f(r.get('searched_mb'), '.4f')} | "
                f"{_f(r.get('searched_val'))} | {_f(r.get('searched_test'))} | "
                f"{_f(r.get('margin'), '+.2f')} | {'yes' if r['ok'] else 'NO'} |"
            )
        lines.append("")
    if ref:
        mn = doc["min_mb"]
        lines.append(
            f"Cheapest assignment over all candidates (MILP minimum of MB): {mn['exact']:.4f} MB "
            f"= {ck.get('min_share', 0):.1f}% of uniform w8a8 ({ref:.4f} MB); target: within "
            f"{TARGET_DROP:g} point of FP32 at <= {100 * TARGET_SHARE:.0f}% = "
            f"{ck.get('target_mb', 0):.4f} MB."
        )
        for key, what in (
            ("cheapest_within_test", "Cheapest searched point within 1 point of FP32 on test"),
            ("cheapest_within_val", "Cheapest searched point within 1 point of FP32 on validation"),
            ("best_under_target", "Best searched point (by validation) at <= the target MB"),
        ):
            c = ck.get(key)
            if c:
                lines.append(
                    f"{what}: {c['mb']:.4f} MB ({_f(c['pct_w8a8'], '.1f')}% of w8a8), "
                    f"validation {_f(c['val'])}%, test {_f(c['test'])}%."
                )
        lines.append(f"Target met: {'yes' if ck.get('target_ok') else 'no'}.")
    sc = doc["selection_cost"]
    sec = doc["seconds"]
    lines += [
        "",
        f"Selection cost (this run): {sc['evaluations']} candidate evaluations over "
        f"{sc['budgets']} budgets, {sc['seconds']:.0f} s (MILP enumeration + selection QAT + "
        f"validation); the k-best enumerations took {sc['milp_solves']} MILP solves, "
        f"{sc['milp_seconds']:.0f} s when computed ({sc['resumed_from_cache']} of them read back "
        "from the cache in this run). Sweep phases (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sec.items())
        + ".",
    ]
    lines += extra or []
    lines += ["", "Searched assignments (w/a per layer; candidates: proxy, MB, validation):", ""]
    for p in srch:
        lay = p["assignment"]
        lines.append(
            f"- <= {p['budget_mb']:.4f} MB: "
            + ", ".join(f"{k} w{v['w']}a{v['a']}" for k, v in lay.items())
        )
        for c in p["selection"]["candidates"]:
            lines.append(
                f"  - rank {c['rank']} ({c.get('source', 'milp')}): proxy "
                f"{c['sensitivity']:.4g}, {c['mb']:.4f} MB, "
                f"validation {_f(c['val_fakequant_top1'])}"
                + (" **(chosen)**" if c["rank"] == p["selection"]["chosen_rank"] else "")
            )
    return "\n".join(lines) + "\n"


def plot_front(doc: dict, path: str | Path) -> None:
    """Test top-1 (integer program) vs MB: uniform points, searched points, FP32 and targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for kind, style in (("uniform", "s--"), ("searched", "o-")):
        pts = [
            (p["metrics"]["mb"], _top1(p, "test"), p.get("bits"))
            for p in doc["points"]
            if p["kind"] == kind and "metrics" in p and _top1(p, "test") is not None
        ]
        pts.sort()
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind)
        for x, y, tag in pts:
            if tag:
                ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ck = doc.get("checks", {})
    if ck.get("fp32_test") is not None:
        ax.axhline(ck["fp32_test"], color="gray", lw=0.8, ls=":", label="FP32")
        ax.axhline(ck["fp32_test"] - TARGET_DROP, color="gray", lw=0.6, ls="-.", label="FP32 - 1")
    if ck.get("target_mb"):
        ax.axvline(ck["target_mb"], color="tab:red", lw=0.6, ls=":", label="55% of w8a8")
    ax.set_xlabel("communication per inference, online + offline (MB)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(
        f"{doc['model']}: mixed precision vs uniform ({doc['recipe_label'][:40]})", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["checks", "default_budgets", "markdown", "plot_front", "sweep", "uniform_bits"]
