"""Writes this folder's workdirs and exports with the stack they are named after (jax 0.10.2,
flax 0.12.8, orbax-checkpoint 0.12.8; run once, from the repo root, with that stack installed):

  PYTHONPATH=.:tests python tests/data/jax_0_10_2/make.py

`classifier/`: a workdir of tests/tiny.py's demo config stopped at step 2 of 4 (its checkpoint,
config.json, model.json) and `export/`, the export of that checkpoint. `detector/`: a workdir of
test_detection_training's tiny LCT Faster R-CNN at step 1 and its export. `expected.npz`: what
that stack computed from the exports on fixed inputs (classifier logits; detector boxes, scores,
labels and valid), for tests/test_legacy_stack.py to compare with the current stack's."""

import os
import shutil
import tempfile

import jax
import numpy as np

from lct_flax import export
from lct_flax import input_pipeline
from lct_flax import pixels
from lct_flax import trainer
from lct_flax.datasets import coco_shapes
from lct_flax.detection import data, data_config
from lct_flax.detection import task as detection_task
from tiny import tiny_demo_config

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSIFIER_STEPS = 2
DIGIT_INPUTS = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
SHAPE_INPUTS = np.random.default_rng(1).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)


def keep_workdir(workdir, name):
  """The workdir's checkpoints, config.json and model.json (no event files) as HERE/name."""
  target = os.path.join(HERE, name)
  shutil.rmtree(target, ignore_errors=True)
  os.makedirs(target)
  for entry in ("checkpoints", "config.json", "model.json"):
    source = os.path.join(workdir, entry)
    (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, os.path.join(target, entry))
  return target


def classifier(scratch):
  digits = input_pipeline.default_dataset_config(
      "sklearn_digits", data_dir=os.path.join(scratch, "digits"), image_size=8, resize_size=8)
  input_pipeline.prepare_dataset(digits)
  config = tiny_demo_config(digits.data_dir, num_train_steps=CLASSIFIER_STEPS)
  workdir = os.path.join(scratch, "classifier")
  trainer.train_and_evaluate(config, workdir)
  target = keep_workdir(workdir, "classifier")
  output = export.export_workdir(target, os.path.join(target, "export"))
  model, variables, config = export.load(output)
  images = pixels.normalize(DIGIT_INPUTS, config.dataset.mean, config.dataset.std)
  return {"classifier_logits": np.asarray(model.apply(variables, images, train=False))}


def detector(scratch):
  from test_detection_training import tiny_config
  layout = coco_shapes.write_shapes_coco(os.path.join(scratch, "coco"), num_train=8, num_val=2,
                                         seed=0)
  dataset = data_config.shapes_dataset_config(data_dir=os.path.join(scratch, "shapes"),
                                              manual_dir=layout.root)
  data.prepare_dataset(dataset)
  config = tiny_config(dataset, num_train_steps=1)
  workdir = os.path.join(scratch, "detector")
  detection_task.train_and_evaluate(config, workdir)
  target = keep_workdir(workdir, "detector")
  output = export.export_workdir(target, os.path.join(target, "export"))
  model, variables, _ = export.load(output)
  detections = model.apply(variables, SHAPE_INPUTS, np.array([[64, 96]], np.int32))
  return {f"detector_{k}": np.asarray(getattr(detections, k))
          for k in ("boxes", "scores", "labels", "valid")}


def main():
  with tempfile.TemporaryDirectory() as scratch:
    expected = {**classifier(scratch), **detector(scratch), "digit_inputs": DIGIT_INPUTS,
                "shape_inputs": SHAPE_INPUTS, "jax_version": np.array(jax.__version__)}
  np.savez(os.path.join(HERE, "expected.npz"), **expected)


if __name__ == "__main__":
  main()
