#!/usr/bin/env bash
# Set up, then run the whole test suite (about 15-22 minutes on a 2-core CPU) in two worker
# processes, each running one test file at a time (so module fixtures are built once), the longest
# files first (tests/conftest.py). Extra arguments go to pytest (e.g. -k trainer, or -n 0 for one
# process).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --plan
.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@"
