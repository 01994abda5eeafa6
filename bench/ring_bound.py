"""How far narrower requantization rings can go: a cost bound (issue 14 item 1).

A requant's ring holds its pre-sum ``m * acc``, so it is as many bits wider than the
accumulator as the multiplier has (``quant.lower.dyadic``: about ``bits_out + 2`` plus the spread
of the per-channel scales, 9-11 bits at w4a4; ``bits_out + 10`` in the largest channel until
commit 6253b6f, 13-15 bits), and the linear layer before it computes in that ring.
This script asks what ANY exact requantization whose ring is the accumulator's width plus
``b`` bits could save, without building one: it rewrites every requant op of the artifact so
that its largest multiplier has ``b`` significant bits (shift and offset scaled down with it;
the pre-sum ring becomes ``acc + b + 1`` bits, and so does the ring of the linear layer feeding
it), then evaluates the declared cost of the rewritten program under the existing protocols.
Those protocols are exact at any ring width, so the figure is what this protocol family (one
masked opening, comparisons over the ring, a selection) reaches in rings that narrow: the
comparisons still span the accumulator's range, which any exact clip-and-truncate must decide.
The rewritten program's outputs are meaningless (its multipliers are too coarse): only its
cost is read.

A second family of rows also caps every linear layer's accumulator at ``P`` bits (the bound
``|acc| < 2^(P-1)`` that accumulator-aware training, e.g. A2Q (Colbert et al., ICCV 2023),
enforces through per-channel weight-norm constraints) to show what the targets would need.

Ratios are to the CrypTen-native row (TTP, 64-bit fixed point) of the same artifact's
``bench/reports/<config>/report.json``; both sides trust a third party (privquant: dealer).

    python bench/ring_bound.py --out bench/ring_bound.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "resnet18-cifar-w4a4"
QUANTIZE = ["--model", "resnet18-cifar", "--bits", "w4a4", "--calib", "64"]  # as bench/results.py


def narrow(program, b: int, acc_bits: int | None = None):
    """``program`` with every requant's largest multiplier cut to ``b`` significant bits and,
    with ``acc_bits``, every conv2d/linear output bounded by ``|acc| < 2^(acc_bits-1)``."""
    from privquant.program import requant_presum_bounds

    if acc_bits is not None:
        cap = (1 << (acc_bits - 1)) - 1
        for op in program.ops:
            if op.kind in ("conv2d", "linear"):
                t = program.tensors[op.output]
                program.tensors[op.output] = dataclasses.replace(
                    t, lo=max(t.lo, -cap), hi=min(t.hi, cap)
                )
    for op in program.ops:
        if op.kind != "requant":
            continue
        n = len(op.inputs)
        k = int(op.attrs["shift"])
        top = max(int(np.abs(op.arrays[f"mult{i}"]).max()).bit_length() for i in range(n))
        d = min(k - 1, max(0, top - b))
        for i in range(n):
            m = op.arrays[f"mult{i}"]
            op.arrays[f"mult{i}"] = np.where(m == 0, 0, np.maximum(1, np.round(m / 2**d))).astype(
                np.int64
            )
        op.arrays["offset"] = np.round(op.arrays["offset"] / 2**d).astype(np.int64)
        op.attrs["shift"] = k - d
        op.__dict__.pop("_presum_memo", None)
        ins = [program.tensors[i] for i in op.inputs]
        op.attrs["t_lo"], op.attrs["t_hi"] = requant_presum_bounds(op, ins)
    return program


def measure(path: str, b: int | None, acc_bits: int | None) -> dict:
    import privquant
    from privquant.costs import program_cost
    from privquant.program import ring_bits

    prog = privquant.load(path).program
    if b is not None:
        prog = narrow(prog, b, acc_bits)
    total, _ = program_cost(prog, batch=1, preprocessing="dealer")
    rings = ring_bits(prog)
    req = [rings[op.output] for op in prog.ops if op.kind in ("conv2d", "linear")]
    mb = lambda bits: bits / 8e6  # noqa: E731
    return {
        "multiplier_bits": b,
        "acc_bits": acc_bits,
        "linear_rings": f"{min(req)}-{max(req)}",
        "online": mb(total.online_bits),
        "offline": mb(total.offline_bits),
        "setup": mb(total.setup_bits),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", help="a resnet18-cifar w4a4 artifact (default: quantize one)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rep = json.loads((ROOT / "bench" / "reports" / CONFIG / "report.json").read_text())
    cr = rep["backends"]["crypten"]["total_mb"]
    cr_amort, cr_single = (
        cr["total_setup_amortized_100"],
        cr["online"] + cr["offline"] + cr["setup"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = a.artifact
        if path is None:
            path = str(Path(tmp) / "r18.pq")
            cmd = [sys.executable, "-m", "privquant.cli", "quantize", *QUANTIZE, "--out", path]
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        cases = [(None, None), (2, None), (1, None), (2, 18), (2, 16), (1, 16)]
        rows = [measure(path, b, p) for b, p in cases]
    lines = [
        "# Narrow requantization rings: what they can save at best (issue 14 item 1)",
        "",
        "Generated by `python bench/ring_bound.py` (method in its docstring). resnet18-cifar "
        "w4a4 (random weights, quantized as in `bench/results.py`), privquant under the "
        "dealer vs CrypTen-native (TTP, 64-bit fixed point, "
        f"{cr_amort:.2f} MB per image amortized, {cr_single:.2f} MB for one inference, from "
        f"`bench/reports/{CONFIG}/report.json`): both trust a third party. Declared costs; "
        "total = online + offline + setup/100, single = online + offline + setup.",
        "",
        "| requant multiplier | accumulator bound (within) | linear rings | online MB | offline MB "
        "| setup MB | total MB/image | × CrypTen (target 30) | single MB | × CrypTen single "
        "(target 12) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tot = r["online"] + r["offline"] + r["setup"] / 100
        single = r["online"] + r["offline"] + r["setup"]
        mult = "as lowered" if r["multiplier_bits"] is None else f"{r['multiplier_bits']} bits"
        acc = "worst case" if r["acc_bits"] is None else f"±2^{r['acc_bits'] - 1}"
        lines.append(
            f"| {mult} | {acc} | {r['linear_rings']} | {r['online']:.2f} | {r['offline']:.2f} | "
            f"{r['setup']:.2f} | {tot:.2f} | {cr_amort / tot:.1f} | {single:.2f} | "
            f"{cr_single / single:.1f} |"
        )
    lines += [
        "",
        "Targets (issue 14): ≥ 30× amortized, ≥ 12× single inference, setup ≤ 24 MB. The "
        "multiplier rows bound every exact requantization whose ring is the accumulator's "
        "width plus 1-2 bits; the accumulator rows add a bound that only training can provide.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
