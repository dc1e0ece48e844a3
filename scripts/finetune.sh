#!/usr/bin/env bash
# Fine-tuning demo: runs scripts/demo.sh first when its export is missing, then a linear probe of
# that export on the digits (configs/finetune.py: new head, frozen backbone and BatchNorm, cosine
# schedule), exports and evaluates it. Extra arguments go to train.py (--config.KEY=VALUE).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if [[ ! -f workdir/demo/export/export.json ]]; then
  bash scripts/demo.sh
fi
WORKDIR="${WORKDIR:-workdir/finetune}"
.venv/bin/python train.py --config=configs/finetune.py --workdir="$WORKDIR" "$@"
.venv/bin/python -m lct_flax.export --workdir="$WORKDIR" --output="$WORKDIR/export" --overwrite
.venv/bin/python -m lct_flax.evaluate --export="$WORKDIR/export"
