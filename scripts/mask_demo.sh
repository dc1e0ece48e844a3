#!/usr/bin/env bash
# Mask R-CNN demo: scripts/detection_demo.sh with the tiny LCT Mask R-CNN of
# configs/detection/shapes_mask_demo.py (the shapes' polygons are its instance masks) in
# workdir/shapes_mask, from scratch (a few minutes on a 2-core CPU); the export is evaluated with
# pycocotools' COCOeval, box and mask AP. Running it again resumes (or, when finished,
# re-evaluates). Extra arguments go to train.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONFIG=configs/detection/shapes_mask_demo.py WORKDIR="${WORKDIR:-workdir/shapes_mask}" \
    exec bash scripts/detection_demo.sh "$@"
