#!/usr/bin/env bash
# Detection demo: writes the generated shapes dataset in the COCO 2017 directory layout
# (workdir/shapes_coco), prepares it with the real coco_instances tfds builder (workdir/shapes_data),
# trains the tiny LCT Faster R-CNN of configs/detection/shapes_demo.py from scratch (a few minutes
# on a 2-core CPU), exports it and evaluates the export with pycocotools' COCOeval (box AP).
# Running it again resumes (or, when finished, re-evaluates). Extra arguments go to train.py.
# CONFIG and WORKDIR choose another detector config and run directory (scripts/mask_demo.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
CONFIG="${CONFIG:-configs/detection/shapes_demo.py}"
WORKDIR="${WORKDIR:-workdir/shapes}"
LAYOUT="${LAYOUT:-workdir/shapes_coco}"
DATA="${DATA:-workdir/shapes_data}"
if [[ ! -f "$LAYOUT/annotations/instances_val2017.json" ]]; then
  .venv/bin/python -m lct_flax.datasets.coco_shapes --output="$LAYOUT"
fi
.venv/bin/python -m lct_flax.detection.data --dataset=coco_instances/shapes \
    --manual_dir="$LAYOUT" --data_dir="$DATA"
.venv/bin/python train.py --config="$CONFIG" --workdir="$WORKDIR" \
    --config.dataset.data_dir="$DATA" --config.dataset.manual_dir="$LAYOUT" "$@"
.venv/bin/python -m lct_flax.export --workdir="$WORKDIR" --output="$WORKDIR/export" --overwrite
.venv/bin/python -m lct_flax.evaluate --export="$WORKDIR/export"
