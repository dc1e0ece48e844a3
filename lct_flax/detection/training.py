"""Pure steps of detector training and evaluation (the detection task of `lct_flax.loop`).

`train_step` is one SGD step of `TwoStageDetector.losses` on a global batch; `detect_step` gives
the detections of an eval batch. Both are `jax.jit`-compiled over the device mesh by the task; a
new canvas shape compiles once, then every batch of that canvas reuses the program.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lct_flax import freezing
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


def train_step(state: Any, batch: dict, *, model: detector_lib.TwoStageDetector,
               optimizer: optax.GradientTransformation,
               param_labels: Any = None) -> tuple[Any, dict]:
  """One step on a global batch: the detector's losses (RPN + R-CNN stages + masks), their gradient
  (frozen parameters' never computed), the optimizer update. Metrics: `loss`, each loss part,
  `grad_norm` (before clipping) and `finite` for the loop's NaN guard."""
  key = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    (loss, parts), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch, key, method="losses",
        mutable=["batch_stats"])
    return loss, (parts, updates["batch_stats"])

  (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if param_labels is not None:
    grads = freezing.zero_frozen(grads, param_labels)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **parts, "grad_norm": grad_norm,
             "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), metrics


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


def backbone_labels(params: Any, *, frozen_stages: int, frozen_bn: bool) -> Any:
  """`freezing.parameter_labels` of a detector: the backbone's by mmdetection's rules, every
  other part (FPN, RPN, box heads) trainable."""
  labels = jax.tree.map(lambda _: freezing.TRAINABLE, params)
  labels["backbone"] = freezing.parameter_labels(params["backbone"], frozen_stages=frozen_stages,
                                                 frozen_bn=frozen_bn)
  return labels
