"""Gradient compression benchmark: resnet8 on Fashion-MNIST, every method, W = 2 and 4, on
loopback and on an emulated slow link. Writes bench/gradcomp.md and bench/gradcomp.png.

Runs (one JSON each under ``--runs``, skipped when present without an error: the benchmark
resumes):

* ``acc-W{W}-{variant}``: training on loopback, same seed, epochs and data for every variant;
  test top-1 after each epoch, bytes per step per rank (declared == measured is checked on
  every step), replica hashes, wall time.
* ``{link}-W{W}-{variant}``: ``--slow-steps`` steps with the ranks split over two network
  namespaces joined by the project's emulated link (privquant.baselines.latency.Emulation:
  tc netem, or its userspace TUN wire), one run per ``--links NAME:BIT_PER_S:RTT_S`` (default
  100 Mbit/s and 10 Mbit/s, both 20 ms RTT); time per epoch = median step time x steps per
  epoch of the full 60k training set. Needs root; skipped with the reason otherwise.

Usage::

    python bench/gradcomp.py --quick          # W=2: 12k images, 3 epochs; W=4 and the
                                              # emulated links: 40-step bytes/timing runs
    python bench/gradcomp.py --full           # 60k images, 10 epochs, 100 slow-link steps
    python bench/gradcomp.py --report-only    # rebuild the table and plot from the JSONs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS: dict[str, tuple[str, dict]] = {
    "none": ("none", {}),
    "fp16": ("fp16", {}),
    "terngrad": ("terngrad", {}),
    "terngrad-shared": ("terngrad", {"summable": True}),
    "qsgd": ("qsgd", {"levels": 7, "bucket": 512, "norm": "max"}),
    "qsgd-shared-private": (
        "qsgd",
        {"levels": 7, "bucket": 512, "norm": "max", "summable": True, "private": True},
    ),
    "dgc": ("dgc", {"density": 0.001}),
    "dgc-1pct": ("dgc", {"density": 0.01}),
    "bingrad": ("bingrad", {}),
    "orq": ("orq", {"levels": 4}),
    "co3": ("co3", {}),
}
# accuracy criterion of issue 15 at W = 2 (points below uncompressed training)
TOLERANCE = {"terngrad": 2.0, "terngrad-shared": 2.0, "bingrad": 2.0}
FULL_TRAIN = 60000
SLOW_DEFAULT = ("none", "fp16", "terngrad", "qsgd", "dgc", "bingrad", "orq", "co3")


def config(args, variant: str, *, slow: bool = False):
    """``slow``: a timing/bytes run of ``--slow-steps`` steps (no accuracy)."""
    from privquant.train.ddp import RunConfig

    method, opts = VARIANTS[variant]
    return RunConfig(
        model="resnet8",
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        limit=args.limit,
        test_limit=500 if slow else args.test_limit,
        seed=args.seed,
        method=method,
        options=dict(opts),
        progress=False,
        timeout=600.0,
        eval_every_epoch=not slow,
        max_steps=args.slow_steps if slow else None,
    )


def run_acc(args, variant: str, world: int, link=None) -> dict:
    from privquant.train.launch import launch_local

    short = world not in args.acc_workers
    t0 = time.perf_counter()
    res = launch_local(config(args, variant, slow=short), world, deadline_s=6 * 3600)
    res.update(variant=variant, link="loopback", wall=time.perf_counter() - t0, short=short)
    if short:
        res["test_top1"] = None  # a bytes/timing run: too short for accuracy
    return res


def run_slow(args, variant: str, world: int, link: tuple[str, float, float]) -> dict:
    from privquant.baselines.latency import (
        CLIENT_SIDE,
        SERVER_SIDE,
        Emulation,
        Network,
        emulation_unavailable,
    )
    from privquant.train.launch import launch_local

    why = emulation_unavailable()
    if why:
        return {"variant": variant, "link": link[0], "skipped": why}
    net = Network(link[0], link[1], link[2])
    with Emulation(net) as emu:
        rtt = emu.measure_rtt()
        sides = [SERVER_SIDE if r < (world + 1) // 2 else CLIENT_SIDE for r in range(world)]
        t0 = time.perf_counter()
        res = launch_local(
            config(args, variant, slow=True),
            world,
            master_addr=emu.addr[SERVER_SIDE],
            prefixes=[emu.prefix(s) for s in sides],
            deadline_s=3600,
        )
        res.update(
            variant=variant,
            link=link[0],
            wall=time.perf_counter() - t0,
            emulation=emu.method,
            notes=emu.notes,
            ping_rtt_s=rtt,
            network={"bandwidth_bps": net.bandwidth_bps, "rtt_s": net.rtt_s},
            sides=sides,
        )
    per_epoch = math.ceil(FULL_TRAIN / args.batch_size)
    res["epoch_seconds_60k"] = res["median_step_seconds"] * per_epoch
    return res


def run_all(args) -> None:
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    jobs = []
    for world in args.workers:
        for v in args.variants:
            jobs.append(("acc", world, v, None))
    # timing runs: repeat r of every variant before repeat r + 1 (interleaved, so that the load
    # of a shared machine drifts over all variants alike); the report takes the median
    for rep in range(args.slow_repeats):
        for link in args.links:
            for world in args.workers:
                for v in args.slow_variants:
                    jobs.append((link[0], world, v, link, rep))
    jobs = [(*j, 0) if len(j) == 4 else j for j in jobs]
    for kind, world, v, link, rep in jobs:
        path = runs / f"{kind}-W{world}-{v}.json"
        old = json.loads(path.read_text()) if path.is_file() else None
        if old is not None and "error" not in old and len(old.get("repeats", [0])) > rep:
            continue  # done (a failed run is tried again)
        print(f"[{time.strftime('%H:%M:%S')}] {kind} W={world} {v} #{rep + 1}", file=sys.stderr,
              flush=True)  # fmt: skip
        try:
            res = (run_acc if kind == "acc" else run_slow)(args, v, world, link)
        except Exception as e:  # one failed run must not stop the others; it is reported
            res = {"variant": v, "link": kind, "error": str(e).splitlines()[0][:300]}
        if kind != "acc" and "error" not in res and "skipped" not in res:
            prev = [] if old is None or "error" in old else old.get("repeats", [old])
            res["repeats"] = [{k: r[k] for k in ("median_step_seconds", "wall")} for r in prev] + [
                {"median_step_seconds": res["median_step_seconds"], "wall": res["wall"]}
            ]
            steps = sorted(r["median_step_seconds"] for r in res["repeats"])
            res["median_step_seconds"] = steps[len(steps) // 2]
            res["epoch_seconds_60k"] = res["median_step_seconds"] * math.ceil(
                FULL_TRAIN / args.batch_size
            )
        res["args"] = {k: v for k, v in vars(args).items() if k not in ("func",)}
        res["argv"] = sys.argv[1:]
        path.write_text(json.dumps(res, sort_keys=True, indent=1))


# ---------------------------------------------------------------------- report
def load(runs: Path) -> dict:
    out = {}
    for p in sorted(runs.glob("*.json")):
        kind, w, variant = p.stem.split("-", 2)
        out[(kind, int(w[1:]), variant)] = json.loads(p.read_text())
    return out


def epoch_seconds(r: dict, batch_size: int) -> float | None:
    """Timing runs: the best (minimum) over the repeats of the median step time, times the
    steps of a 60k epoch -- on a shared machine the least-disturbed run is the estimate."""
    reps = [x["median_step_seconds"] for x in r.get("repeats", [])] or (
        [r["median_step_seconds"]] if "median_step_seconds" in r else []
    )
    return min(reps) * math.ceil(FULL_TRAIN / batch_size) if reps else None


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def report(args) -> str:
    res = load(Path(args.runs))
    lines = [
        "# Gradient compression: resnet8 on Fashion-MNIST",
        "",
        "Generated by `bench/gradcomp.py` from the runs in `"
        + os.path.relpath(args.runs, HERE.parent)
        + "` (settings below). Bytes are per step per rank, as sent on the wire by gloo "
        "(payload + its framing),",
        "mean over the compressed steps (after the 2 uncompressed warm-up steps); `ratio` = fp32",
        "allreduce bytes of the same buckets / the method's bytes (`last step`: after DGC's",
        "density warm-up); `meas==decl`: the kernel's TCP byte counters equal",
        "the closed-form declaration on every step of every rank; `replicas`: all ranks end with",
        "bit-identical parameters and state.",
        "",
    ]
    for world in args.workers:
        base = res.get(("acc", world, "none"), {})
        base_acc = base.get("test_top1")
        lines += [
            f"## W = {world}",
            "",
            "| variant | bytes/step | payload/step | ratio | ratio, last step (x) | meas==decl | "
            "replicas | top-1 | "
            "vs none | s/epoch loopback (60k) |"
            + "".join(f" s/epoch {n} (60k) |" for n, _, _ in args.links),
            "|---|---:|---:|---:|---:|:-:|:-:|---:|---:|---:|" + "---:|" * len(args.links),
        ]
        for v in args.variants:
            r = res.get(("acc", world, v))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {v} | error: {r['error']} |||||||||")
                continue
            b = r["bytes"]
            acc = r.get("test_top1")
            delta = None if acc is None or base_acc is None else acc - base_acc
            cells = []
            for name, _, _ in args.links:
                s = res.get((name, world, v), {})
                sec = epoch_seconds(s, args.batch_size)
                cells.append(
                    fmt(sec, ".0f") if sec else (s.get("skipped") or s.get("error") or "-")
                )
            per_epoch = math.ceil(FULL_TRAIN / r["batch_size"])
            lines.append(
                f"| {v} | {b['wire_per_step']:,.0f} | {b['payload_per_step']:,.0f} | "
                f"{b['ratio_wire']:.1f}x | {fmt(b.get('ratio_wire_last_step'), '.1f')} | "
                f"{'yes' if b['measured_equals_declared'] else 'NO'} | "
                f"{'yes' if r['replicas_identical'] else 'NO'} | {fmt(acc)} | "
                f"{fmt(delta, '+.2f')} | {r['median_step_seconds'] * per_epoch:.0f} |"
                + "".join(f" {c} |" for c in cells)
            )
        lines.append("")
    a0 = next((r for k, r in res.items() if k[0] == "acc" and "args" in r), None)
    if a0:
        a = a0["args"]
        lines += [
            f"Training: resnet8, {a['epochs']} epoch(s) on the first {a['limit'] or FULL_TRAIN} "
            f"training images, global batch {a['batch_size']}, lr {a['lr']}, seed {a['seed']}, "
            f"test on {a['test_limit'] or 10000} test images; SGD momentum 0.9 Nesterov "
            "(0 for dgc: its hook owns the momentum), cosine decay, weight decay 5e-4.",
            "",
        ]
    for name, _, _ in args.links:
        s0 = next((r for k, r in res.items() if k[0] == name and "network" in r), None)
        if not s0:
            continue
        lines += [
            f"Link `{name}`: {s0['network']['bandwidth_bps'] / 1e6:g} Mbit/s, "
            f"{s0['network']['rtt_s'] * 1e3:g} ms RTT ({s0['emulation']}; measured ping RTT "
            f"{fmt((s0.get('ping_rtt_s') or 0) * 1e3, '.1f')} ms); ranks split over the two "
            "sides (W = 4: ranks 0,1 | 2,3, so the ring crosses the link twice); "
            f"{s0['args']['slow_steps']} steps per run, {len(s0.get('repeats', [1]))} runs "
            "per variant interleaved, s/epoch = the best run's median step time x "
            f"{math.ceil(FULL_TRAIN / s0['args']['batch_size'])} steps.",
            "",
        ]
    lines += estimate_table(res, args)
    lines += [
        "Times are wall-clock on a 2-core machine shared with other jobs (load average 4-16 "
        "during these runs): compare them within a column, not as absolute speeds.",
        "",
    ]
    lines += verdicts(res, args)
    return "\n".join(lines) + "\n"


def hops(variant: str, world: int) -> int:
    """Sequential one-way message hops per step of the variant's collectives on one bucket:
    a gloo ring all_reduce makes 4(W-1) dependent sends, an all_gather 2(W-1)."""
    method, opts = VARIANTS[variant]
    if method in ("none", "fp16"):
        return 4 * (world - 1)
    if opts.get("summable"):
        return 8 * (world - 1)  # the shared scales' all_reduce, then the codes'
    if method == "co3":
        return 4 * (world - 1)  # the lengths' all_gather, then the payloads'
    return 2 * (world - 1)


def estimate_table(res, args) -> list[str]:
    """Load-independent view: communication time per epoch = steps x (bytes x 8 / bandwidth +
    hops x RTT / 2), from the measured bytes per step (the model of baselines/latency.py)."""
    if not args.links:
        return []
    out = [
        "Estimated communication time per epoch of 60k images (s), from the measured bytes: "
        f"{math.ceil(FULL_TRAIN / args.batch_size)} steps x (bytes x 8 / bandwidth + hops x "
        "RTT / 2), hops = 4(W-1) per ring all_reduce, 2(W-1) per all_gather (no compute):",
        "",
        "| variant | "
        + " | ".join(f"{n} W={w}" for n, _, _ in args.links for w in args.workers)
        + " |",
        "|---|" + "---:|" * (len(args.links) * len(args.workers)),
    ]
    steps = math.ceil(FULL_TRAIN / args.batch_size)
    for v in args.variants:
        cells = []
        for _, bw, rtt in args.links:
            for w in args.workers:
                r = res.get(("acc", w, v))
                if not r or "bytes" not in r:
                    cells.append("-")
                    continue
                b = r["bytes"]
                wire = (
                    b.get("ratio_wire_last_step")
                    and b["fp32_wire_per_step"] / b["ratio_wire_last_step"]
                )
                wire = wire or b["wire_per_step"]
                cells.append(f"{steps * (wire * 8 / bw + hops(v, w) * rtt / 2):.1f}")
        out.append(f"| {v} | " + " | ".join(cells) + " |")
    return [*out, ""]


def verdicts(res, args) -> list[str]:
    out = ["## Checks (issue 15)", ""]
    base = res.get(("acc", 2, "none"), {}).get("test_top1")
    for v in args.variants:
        r = res.get(("acc", 2, v))
        if not r or "error" in r or v == "none" or base is None:
            continue
        tol = TOLERANCE.get(v, 1.0)
        d = r["test_top1"] - base
        out.append(
            f"- {v}: top-1 {r['test_top1']:.2f} vs {base:.2f} ({d:+.2f}; bound -{tol:.1f}): "
            + ("within" if d >= -tol else "OUTSIDE")
        )
    for name, _, _ in args.links:
        for world in args.workers:
            none = epoch_seconds(res.get((name, world, "none"), {}), args.batch_size)
            cands = {
                v: epoch_seconds(r, args.batch_size)
                for (k, w, v), r in res.items()
                if k == name and w == world and "bytes" in r and v != "none"
            }
            if none and cands:
                best = min(cands, key=cands.get)
                out.append(
                    f"- link `{name}`, W = {world}: fastest {best} {cands[best]:.0f} s/epoch vs "
                    f"fp32 allreduce {none:.0f} s/epoch ({none / cands[best]:.2f}x faster)"
                )
    ok = [r["bytes"]["measured_equals_declared"] for r in res.values() if "bytes" in r]
    ident = [r["replicas_identical"] for r in res.values() if "bytes" in r]
    out.append(
        f"- all {len(ok)} runs (loopback and emulated links): measured == declared on every "
        f"compared step of every rank in {sum(ok)}; bit-identical replicas in {sum(ident)}"
    )
    out.append("")
    return out


def plot(args, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = load(Path(args.runs))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.cm.tab20.colors
    for i, v in enumerate(args.variants):
        r = res.get(("acc", 2, v))
        if not r or "error" in r or not r.get("curve"):
            continue
        per_step = r["bytes"]["wire_per_step"]
        xs = [c["step"] * per_step / 1e6 for c in r["curve"]]
        ts = [c["seconds"] for c in r["curve"]]
        ys = [c["test_top1"] for c in r["curve"]]
        style = {"marker": "o", "label": v, "color": colors[(2 * i) % 20 + (2 * i) // 20]}
        axes[0].plot(xs, ys, **style)
        axes[1].plot(ts, ys, **style)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("MB sent per rank (cumulative, wire)")
    axes[1].set_xlabel("wall time, loopback (s)")
    for ax in axes:
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("W = 2: accuracy vs bytes")
    axes[1].set_title("W = 2: accuracy vs time")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--runs", default=None, help="directory of per-run JSONs")
    p.add_argument("--out", default=str(HERE / "gradcomp.md"))
    p.add_argument("--workers", default="2,4")
    p.add_argument(
        "--acc-workers",
        default=None,
        help="W values trained for accuracy (others: --slow-steps bytes/timing runs on "
        "loopback); default 2 with --quick, all with --full",
    )
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--slow-variants", default=None)
    p.add_argument(
        "--links",
        default="slow:100e6:0.020,slow10:10e6:0.020",
        help="emulated links NAME:BIT_PER_S:RTT_S, comma-separated ('' for none)",
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--slow-steps", type=int, default=None)
    p.add_argument(
        "--slow-repeats", type=int, default=None, help="timing runs per variant (median)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.mode = args.mode or "quick"
    quick = args.mode == "quick"
    args.epochs = args.epochs or (3 if quick else 10)
    args.limit = args.limit if args.limit is not None else (12000 if quick else None)
    args.test_limit = args.test_limit if args.test_limit is not None else (5000 if quick else None)
    args.slow_steps = args.slow_steps or (40 if quick else 100)
    args.slow_repeats = args.slow_repeats or (3 if quick else 5)
    args.runs = args.runs or str(HERE / "reports" / f"gradcomp-{args.mode}")
    args.workers = [int(w) for w in args.workers.split(",")]
    if args.acc_workers is None:
        args.acc_workers = "2" if quick else ",".join(map(str, args.workers))
    args.acc_workers = [int(w) for w in args.acc_workers.split(",") if w]
    args.variants = [v for v in args.variants.split(",") if v]
    args.slow_variants = (
        [v for v in args.slow_variants.split(",") if v]
        if args.slow_variants
        else [v for v in args.variants if v in SLOW_DEFAULT]
    )
    try:
        args.links = [
            (n, float(b), float(r))
            for n, b, r in (x.split(":") for x in args.links.split(",") if x)
        ]
    except ValueError:
        p.error("--links: expected NAME:BIT_PER_S:RTT_S,...")
    if any(n in ("acc",) or "-" in n for n, _, _ in args.links):
        p.error("--links: a link name may not be 'acc' or contain '-'")
    bad = [v for v in args.variants + args.slow_variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; choose from {', '.join(VARIANTS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # SIGTERM unwinds like an exception, so an emulated link's namespaces are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.report_only:
        run_all(args)
    out = Path(args.out)
    out.write_text(report(args))
    plot(args, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
