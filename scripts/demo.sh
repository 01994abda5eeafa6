#!/usr/bin/env bash
# Set up (if needed) and run the main job: a two-party private inference of the shipped resnet8
# (w4a4, QAT) on 4 shipped Fashion-MNIST test images, with the server, the client and the dealer
# as three OS processes over loopback. Prints the per-layer communication table, the private and
# the plaintext labels, and whether the logits are identical.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/privquant infer privquant/models/weights/resnet8-w4a4.pq --index 0 --batch 4 "$@"
