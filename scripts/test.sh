#!/usr/bin/env bash
# Set up (if needed) and run the default test suite plus lint. Extra args go to pytest,
# e.g. `scripts/test.sh -m slow` for the long accuracy tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check privquant tests bench
.venv/bin/ruff format --check privquant tests bench
if [ "$#" -eq 0 ]; then
    set -- -m "not slow"
fi
export OMP_WAIT_POLICY=PASSIVE  # idle OpenMP threads sleep: several parties share 2 cores
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
