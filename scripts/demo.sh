#!/usr/bin/env bash
# The main job: set up, train LCT-ResNet on the embedded digits dataset (about 2 minutes on a 2-core
# CPU, >= 95% test accuracy), export the trained model and evaluate the export.
# Running it again resumes (or, when finished, re-evaluates). Extra arguments go to train.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
WORKDIR="${WORKDIR:-workdir/demo}"
.venv/bin/python train.py --config=configs/demo.py --workdir="$WORKDIR" "$@"
.venv/bin/python -m lct_flax.export --workdir="$WORKDIR" --output="$WORKDIR/export" --overwrite
.venv/bin/python -m lct_flax.evaluate --export="$WORKDIR/export"
