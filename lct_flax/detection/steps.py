"""Pure pieces of detector training and evaluation (the detection task, `lct_flax.tasks`).

`loss` is `TwoStageDetector.losses` as `train_state.train_step` takes it; `detect_step` gives the
detections of an eval batch. The steps are `jax.jit`-compiled over the device mesh by the task; a
new canvas shape compiles once, then every batch of that canvas reuses the program.
"""

from __future__ import annotations

from typing import Any

import jax

from lct_flax.detection import detector as detector_lib

# The batch fields the device needs; the rest (image ids, scales, original shapes) stay on the host.
TRAIN_KEYS = ("image", "image_shape", "boxes", "labels", "valid")
MASK_TRAIN_KEYS = TRAIN_KEYS + ("masks",)
EVAL_KEYS = ("image", "image_shape")


def train_keys(model: detector_lib.TwoStageDetector) -> tuple:
  """The train batch fields `model`'s losses read (a Mask R-CNN's also the instance masks)."""
  return MASK_TRAIN_KEYS if model.settings.with_masks else TRAIN_KEYS


def device_batch(batch: dict, keys: tuple) -> dict:
  return {key: batch[key] for key in keys}


def loss(variables: dict, batch: dict, rng: jax.Array, *,
         model: detector_lib.TwoStageDetector) -> tuple[jax.Array, tuple[dict, Any]]:
  """The detector's losses on a global batch (RPN + R-CNN stages + masks; `rng` drives the
  samplers): the total, each part, and the updated BatchNorm statistics
  (`train_state.train_step` takes it)."""
  (value, parts), updates = model.apply(variables, batch, rng, method="losses",
                                        mutable=["batch_stats"])
  return value, (parts, updates["batch_stats"])


def detect_step(variables: dict, batch: dict, *, model: detector_lib.TwoStageDetector) -> dict:
  """Detections of an eval batch: boxes (B, D, 4) in resized-image pixels, scores, labels
  (0..K-1), valid (B, D), num_candidates (B,) (the (box, class) pairs above the score threshold,
  of which the final NMS saw at most `max_candidates`), and a Mask R-CNN's masks (B, D, 28, 28)
  probabilities."""
  detections = model.apply(variables, batch["image"], batch["image_shape"])
  outputs = {"boxes": detections.boxes, "scores": detections.scores,
             "labels": detections.labels, "valid": detections.valid,
             "num_candidates": detections.num_candidates}
  if detections.masks is not None:
    outputs["masks"] = detections.masks
  return outputs
