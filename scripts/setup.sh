#!/usr/bin/env bash
# Idempotent environment setup for PrivQuant on a fresh machine:
#   - a venv in .venv with torch==2.13.0 (CPU wheel) and the project's own dependencies,
#   - CrypTen 0.4.1 installed with --no-deps (its wheel declares the dead `sklearn` package),
#   - when root and missing, Debian's dataset-fashion-mnist (full Fashion-MNIST, IDX .gz).
# Re-running is cheap: a stamp keyed on pyproject.toml skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.privquant-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/pip install -q -e ".[test]"
    .venv/bin/pip install -q --no-deps crypten==0.4.1
    echo "$want" > "$stamp"
fi
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
        >/dev/null 2>&1 || echo "note: could not install dataset-fashion-mnist; the shipped sample is used" >&2
fi
