#!/usr/bin/env bash
# Set up, then run the whole test suite (about 11 minutes on a 2-core CPU). Extra arguments go to
# pytest (e.g. -k trainer).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
