"""Online phase speed: privquant vs CrypTen-native, paired runs, medians (issue 14 item 2).

For every (model, batch) it runs, ``--reps`` times and interleaved (privquant then CrypTen-native
in each repetition, so both see the same machine load), the three-process loopback inference of
``privquant infer`` (dealer mode) and the CrypTen-native baseline of ``privquant bench``, and
reports the client's online seconds per image of each, their ratio per repetition (CrypTen /
privquant) and the medians. ``--no-crypten`` measures privquant alone (e.g. batch scaling).

    OMP_NUM_THREADS=1 nice -n 10 python bench/online_speed.py \
        --model resnet8=privquant/models/weights/resnet8-w4a4.pq --batches 1 --reps 5 \
        --model resnet18=/tmp/r18.pq --batches 1,4,16 --out bench/online_speed.md

(``/tmp/r18.pq``: ``privquant quantize --model resnet18-cifar --bits w4a4 --calib 64 --out
/tmp/r18.pq``, random weights: speed does not depend on them.) Each ``--model`` takes the
``--batches`` that follow it (default 1). Every privquant run must reproduce the plaintext
integer program bit for bit; a run that does not aborts the benchmark. ``--other-tree DIR``
adds, in every repetition, a run of the privquant found in another source tree (e.g. an export of
the previous commit: ``git archive HEAD~5 | tar -x -C /tmp/old``), for before/after pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _images(art, batch: int, seed: int = 0):
    from privquant.bench import bench_inputs

    x, _ = bench_inputs(art, batch, seed)
    return x


def run_privquant(art_path: str, x, timeout: float) -> float:
    from privquant.launch import infer_local

    r = infer_local(art_path, x, timeout=timeout, chunk=max(1, len(x)))
    if not r["identical"]:
        raise SystemExit(f"privquant output differs from the plaintext program on {art_path}")
    return r["report"].seconds["client_online"]


_OTHER = """
import sys, numpy as np, torch
from privquant.launch import infer_local
x = torch.from_numpy(np.load(sys.argv[2]))
r = infer_local(sys.argv[1], x, timeout=float(sys.argv[3]), chunk=len(x))
assert r["identical"], "output differs from the plaintext program"
print(r["report"].seconds["client_online"])
"""


def run_other(tree: str, art_path: str, x, timeout: float, tmp: Path) -> float:
    """The client online seconds of the privquant in source tree ``tree`` (a subprocess)."""
    import numpy as np

    inp = tmp / "x.npy"
    np.save(inp, x.numpy(), allow_pickle=False)
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    out = subprocess.run(
        [sys.executable, "-c", _OTHER, str(Path(art_path).resolve()), str(inp), str(timeout)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout * 4,
        check=True,
        cwd=tmp,
    )
    return float(out.stdout.strip().splitlines()[-1])


def run_crypten(art_path: str, x, timeout: float) -> float:
    from privquant.baselines.crypten_native import run_crypten_native

    cr = run_crypten_native(art_path, x, timeout=timeout, threads=1)
    return cr["result"].seconds["client_online"]


def measure(name, art_path, batch, reps, crypten, timeout, other=None) -> dict:
    import tempfile

    from privquant.quantized import QuantizedModel

    art = QuantizedModel.load(art_path)
    x = _images(art, batch)
    pq, cr, ot = [], [], []
    for i in range(reps):
        pq.append(run_privquant(art_path, x, timeout) / batch)
        msg = f"{name} b{batch} rep {i + 1}/{reps}: privquant {pq[-1]:.4f} s/img"
        if other:
            with tempfile.TemporaryDirectory(prefix="online-speed-") as tmp:
                ot.append(run_other(other, art_path, x, timeout, Path(tmp)) / batch)
            msg += f", other tree {ot[-1]:.4f} s/img"
        if crypten:
            cr.append(run_crypten(art_path, x, timeout) / batch)
            msg += f", crypten {cr[-1]:.4f} s/img, ratio {cr[-1] / pq[-1]:.2f}"
        print(msg, file=sys.stderr, flush=True)
    out = {
        "model": name,
        "artifact": str(art_path),
        "batch": batch,
        "reps": reps,
        "privquant_s_per_image": pq,
        "privquant_median": statistics.median(pq),
    }
    if crypten:
        ratios = [c / p for c, p in zip(cr, pq, strict=True)]
        out.update(
            crypten_s_per_image=cr,
            crypten_median=statistics.median(cr),
            ratio_per_rep=ratios,
            ratio_median=statistics.median(ratios),
        )
        if other:
            ro = [c / p for c, p in zip(cr, ot, strict=True)]
            out.update(other_ratio_per_rep=ro, other_ratio_median=statistics.median(ro))
    if other:
        sp = [o / p for o, p in zip(ot, pq, strict=True)]
        out.update(
            other_tree=str(other),
            other_s_per_image=ot,
            other_median=statistics.median(ot),
            speedup_per_rep=sp,
            speedup_median=statistics.median(sp),
        )
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Online phase speed: privquant vs CrypTen-native",
        "",
        f"Generated by `bench/online_speed.py` ({meta['date']}, OMP_NUM_THREADS="
        f"{meta['omp']}, {meta['reps']} paired repetitions, loopback, 3 processes each).",
        "Client online seconds per image; ratio = CrypTen / privquant per repetition, median.",
        "The machine is shared and loaded: compare within a row only.",
        "",
        "| model | batch | privquant s/img (median) | CrypTen s/img (median) | ratio (median) | "
        "privquant runs |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cr = f"{r['crypten_median']:.4f}" if "crypten_median" in r else "-"
        ra = f"{r['ratio_median']:.2f}" if "ratio_median" in r else "-"
        runs = ", ".join(f"{v:.4f}" for v in r["privquant_s_per_image"])
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['privquant_median']:.4f} | {cr} | {ra} | {runs} |"
        )
    others = [r for r in rows if "other_median" in r]
    if others:
        lines += [
            "",
            f"Before/after: the privquant of `{others[0]['other_tree']}` run in the same "
            "repetitions (speedup = other / this, per repetition, median; CrypTen ratio of "
            "the other tree likewise).",
            "",
            "| model | batch | other s/img (median) | this s/img (median) | speedup (median) | "
            "CrypTen ratio of other (median) | other runs |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in others:
            ro = f"{r['other_ratio_median']:.2f}" if "other_ratio_median" in r else "-"
            runs = ", ".join(f"{v:.4f}" for v in r["other_s_per_image"])
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['other_median']:.4f} | "
                f"{r['privquant_median']:.4f} | {r['speedup_median']:.2f} | {ro} | {runs} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=ARTIFACT.pq")
    ap.add_argument("--batches", action="append", default=[], help="e.g. 1,4,16 (per --model)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-crypten", action="store_true")
    ap.add_argument("--other-tree", help="also run the privquant of this source tree (A/B)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path, help="markdown output (a .json is written next to it)")
    a = ap.parse_args(argv)
    batches = a.batches + ["1"] * (len(a.model) - len(a.batches))
    rows = []
    for spec, bs in zip(a.model, batches, strict=True):
        name, _, path = spec.partition("=")
        for b in (int(v) for v in bs.split(",")):
            rows.append(
                measure(name, path or name, b, a.reps, not a.no_crypten, a.timeout, a.other_tree)
            )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "reps": a.reps,
    }
    md = markdown(rows, meta)
    print(md)
    if a.out:
        a.out.write_text(md)
        a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
