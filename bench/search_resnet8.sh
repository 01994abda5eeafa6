#!/usr/bin/env bash
# Regenerate bench/search_resnet8.{json,png,md}: the communication-aware mixed-precision search on
# resnet8 / Fashion-MNIST (shipped FP32 weights, dealer mode, today's declared protocol costs).
#
# `privquant search --sweep` runs the uniform w8a8..w2a2 points and a search at every uniform
# point's MB, the midpoints between them and 55% of w8a8's MB. At each budget the SELECT_K best
# MILP assignments (pairwise >= 2 widths apart) are fine-tuned briefly (QAT on SELECT_QAT_LIMIT
# images) and scored on the validation split (10k Fashion-MNIST *training* images held out of
# calibration and QAT); the best one is kept. Every point, uniform or searched, then gets the same
# final recipe (QAT_EPOCHS epochs of QAT on the other 50k training images, step sizes frozen so the
# cost is exactly the prediction) and is scored on validation and on the 10k test images
# (needs dataset-fashion-mnist). ANCHOR=1 (default): at each budget the widest uniform point that
# fits is a candidate too (the choice is never worse than it on validation); ANCHOR=0: only the
# MILP's k best. OUT=path/stem writes elsewhere. Also: the resnet18-cifar search time.
#
# Slow on a shared 2-core machine (hours: a QAT epoch of resnet8 is 3-7 min, an exact MILP solve
# 10-60 s). Every evaluated point and every k-best enumeration is cached under $CACHE (keyed by
# weights, calibration, the cost table -- so any change of a protocol's declared cost --, the
# sensitivity, the recipe and the data): an interrupted run resumes where it stopped; FRESH=1
# starts over. QUICK=1: a small smoke run (--quick) written to out/search/quick.* instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QAT_EPOCHS=${QAT_EPOCHS:-1}
SELECT_K=${SELECT_K:-4}
SELECT_QAT_LIMIT=${SELECT_QAT_LIMIT:-8192}
CACHE=${CACHE:-out/search/cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=${OUT:-bench/search_resnet8}
extra=()
[ "${ANCHOR:-1}" = 1 ] && extra+=(--anchor-uniform)
if [ "${QUICK:-0}" = 1 ]; then
    extra+=(--quick)
    out=out/search/quick
    CACHE=$CACHE-quick
fi
mkdir -p out/search
[ "${FRESH:-0}" = 1 ] && rm -rf "$CACHE"
args=(--model resnet8 --sweep --qat-epochs "$QAT_EPOCHS" --select-k "$SELECT_K"
      --select-qat-limit "$SELECT_QAT_LIMIT" --extra-shares 55 "${extra[@]}")
cmd="privquant search ${args[*]} --out $out.json"
# REUSE_SWEEP=1: keep the existing sweep JSON (slow), redo the timing and the report
if [ "${REUSE_SWEEP:-0}" != 1 ]; then
    start=$(date +%s)
    echo "progress: tail -f out/search/sweep.log"
    nice -n 10 "$PY" -m privquant.cli search "${args[@]}" --cache "$CACHE" --out "$out.json" \
        2> out/search/sweep.log > /dev/null
    echo "sweep wall seconds: $(( $(date +%s) - start ))" | tee -a out/search/sweep.log
fi
if [ "${QUICK:-0}" != 1 ]; then
    # a budget that binds: between resnet18-cifar's uniform w4a4 and w8a8
    start=$(date +%s.%N)
    nice -n 10 "$PY" -m privquant.cli search --model resnet18-cifar --budget-mb 30 \
        --out out/search/resnet18-30mb.json --json > out/search/resnet18-30mb.result.json 2> /dev/null
    end=$(date +%s.%N)
    echo "$start $end" > out/search/resnet18-time.txt
fi
"$PY" - "$out.json" "$cmd" "${QUICK:-0}" > "$out.md" <<'PY'
import json, pathlib, sys
from privquant.quant.sweep import markdown
doc = json.loads(pathlib.Path(sys.argv[1]).read_text())
extra = []
aux = pathlib.Path("out/search")
if sys.argv[3] != "1" and (aux / "resnet18-time.txt").is_file():
    t0, t1 = map(float, (aux / "resnet18-time.txt").read_text().split())
    r18 = json.loads((aux / "resnet18-30mb.result.json").read_text())
    extra += ["", f"`privquant search --model resnet18-cifar --budget-mb 30` (random weights, "
              f"synthetic calibration, proxy optimum): {t1 - t0:.0f} s wall, predicted "
              f"{r18['predicted_metrics']['mb']:.4f} MB ({r18['solves']} MILP solve(s)); phases "
              "(s): " + ", ".join(f"{k} {v:.1f}" for k, v in r18["seconds"].items()) + "."]
name = pathlib.Path(sys.argv[1]).with_suffix(".png").name
print(markdown(doc, command=sys.argv[2], plot=name, extra=extra), end="")
PY
cat "$out.md"
