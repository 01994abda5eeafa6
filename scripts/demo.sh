#!/usr/bin/env bash
# Set up (if needed) and run the main job on the shipped model: quantize the shipped resnet8 to
# w8a8 and report FP32 / fake-quant / integer-program accuracy on the shipped test sample.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p out
.venv/bin/privquant quantize --model resnet8 --bits w8a8 --out out/resnet8-w8a8.pq
.venv/bin/privquant eval out/resnet8-w8a8.pq --data fashion-mnist-sample
