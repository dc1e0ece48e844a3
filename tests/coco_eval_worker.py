"""Runs one process of the multi-process COCO evaluation test (not a test module).

  python tests/coco_eval_worker.py --data_dir=D --output=DIR --coordinator_address=A
      --num_processes=P --process_id=I

Each process evaluates its share of the prepared ``coco_instances/shapes`` validation split with
the ground truth as detections (with box-filling masks, so segm is evaluated too), through
``coco_eval.CocoEvaluator``; process 0 writes ``DIR/results.json`` (and ``results.segm.json``);
every process writes the metrics it got to ``DIR/metrics_<I>.json``.
"""

import argparse
import dataclasses
import json
import os
import sys

import numpy as np


def ground_truth_detections(batch, coco_gt, category_ids, convention, max_detections=16,
                            box_masks=False):
  """The non-crowd ground truth of each real image of an eval batch, as detections (score 1) in
  resized-image pixels: what a perfect detector would output (with `box_masks`, 28x28 mask
  probabilities of 1: masks that fill the boxes)."""
  from lct_flax.detection import transforms

  label_of = {category: label for label, category in enumerate(category_ids)}
  size = len(batch["mask"])
  boxes = np.zeros((size, max_detections, 4), np.float32)
  scores = np.zeros((size, max_detections), np.float32)
  labels = np.zeros((size, max_detections), np.int32)
  valid = np.zeros((size, max_detections), bool)
  unclipped = dataclasses.replace(convention, clip=False)
  for n in np.flatnonzero(batch["mask"]):
    annotations = [a for a in coco_gt.imgToAnns[int(batch["image_id"][n])] if not a["iscrowd"]]
    for d, a in enumerate(annotations):
      boxes[n, d] = transforms.transform_boxes(
          transforms.annotation_boxes([a["bbox"]], convention), batch["scale"][n],
          batch["image_shape"][n], False, unclipped)[0]
      scores[n, d], labels[n, d], valid[n, d] = 1.0, label_of[a["category_id"]], True
  detections = {"boxes": boxes, "scores": scores, "labels": labels, "valid": valid}
  if box_masks:
    detections["masks"] = np.ones((size, max_detections, 28, 28), np.float32)
  return detections


def main():
  parser = argparse.ArgumentParser()
  for name in ("data_dir", "output", "coordinator_address"):
    parser.add_argument(f"--{name}", required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax

  from lct_flax.detection import coco_eval
  from lct_flax.detection import data
  from lct_flax.detection import data_config

  jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                             initialization_timeout=60)
  config = data_config.shapes_dataset_config(data_dir=args.data_dir)
  evaluator = coco_eval.CocoEvaluator(config)
  coco_gt = coco_eval.ground_truth(config)
  info = data.get_dataset_info(config)
  convention = data_config.settings(config).box_convention
  for batch in data.create_eval_iterator(config, global_batch_size=4):  # this process's share
    evaluator.add(batch, ground_truth_detections(batch, coco_gt, info.category_ids, convention,
                                                 box_masks=True))
  results = os.path.join(args.output, "results.json") if jax.process_index() == 0 else None
  metrics = evaluator.evaluate(results)
  with open(os.path.join(args.output, f"metrics_{jax.process_index()}.json"), "w") as f:
    json.dump(metrics, f)


if __name__ == "__main__":
  main()
