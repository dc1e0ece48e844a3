"""Detection losses with mmdetection v1.0's weights and normalisation (avg_factor).

mmdet v1 reduces a weighted loss as sum(loss * weight) / avg_factor
(mmdet/models/losses/utils.py weight_reduce_loss). The RPN (anchor_heads/anchor_head.py) uses
sigmoid cross-entropy and smooth L1 with beta 1/9, both divided by the number of sampled anchors
counted as sum over images of max(#pos, 1) + max(#neg, 1) (core/anchor/anchor_target.py);
torchvision (models/detection/rpn.py compute_loss) divides by the plain number of sampled
anchors. The R-CNN head (bbox_heads/bbox_head.py loss) uses softmax cross-entropy divided by the
number of RoIs with a positive label weight (at least 1) and smooth L1 (beta 1.0; torchvision's
fastrcnn_loss: 1/9) on the positives' class-specific (or class-agnostic) deltas, divided by the
number of sampled RoIs, which is what torchvision divides both by. mmdet computed the factors
per GPU (2 images) and averaged gradients over GPUs; here they are taken over the images passed
in, the same whenever every image samples the same number (RPN 256, R-CNN 512 per image).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lct_flax.detection import targets as targets_lib

RPN_NORMALISATIONS = ("mmdet_v1", "torchvision")


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float) -> jax.Array:
  """Elementwise 0.5 d^2 / beta where d = |pred - target| < beta, else d - beta / 2
  (mmdet smooth_l1_loss; torch.nn.functional.smooth_l1_loss)."""
  diff = jnp.abs(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32))
  return jnp.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def sigmoid_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy with logits (F.binary_cross_entropy_with_logits):
  max(x, 0) - x z + log(1 + exp(-|x|))."""
  x = logits.astype(jnp.float32)
  z = targets.astype(jnp.float32)
  return jnp.maximum(x, 0.0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x)))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """(..., K) logits, (...) int labels -> (...) -log softmax(logits)[label] (F.cross_entropy)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def weighted_sum(loss: jax.Array, weight: jax.Array, avg_factor: jax.Array) -> jax.Array:
  """sum(loss * weight) / avg_factor (mmdet weight_reduce_loss, reduction 'mean' with an
  avg_factor)."""
  return jnp.sum(loss * weight.astype(jnp.float32)) / avg_factor


def rpn_avg_factor(num_pos: jax.Array, num_neg: jax.Array, normalisation: str) -> jax.Array:
  """The RPN losses' divisor from per-image sample counts (N,): "mmdet_v1" sum of
  max(pos, 1) + max(neg, 1); "torchvision" sum of pos + neg (at least 1)."""
  if normalisation == "mmdet_v1":
    return jnp.sum(jnp.maximum(num_pos, 1) + jnp.maximum(num_neg, 1)).astype(jnp.float32)
  if normalisation == "torchvision":
    return jnp.maximum(jnp.sum(num_pos + num_neg), 1).astype(jnp.float32)
  raise ValueError(f"unknown RPN loss normalisation {normalisation!r}; choose one of "
                   f"{RPN_NORMALISATIONS}.")


def rpn_loss(logits: jax.Array, deltas: jax.Array, targets: targets_lib.RPNTargets, *,
             normalisation: str = "mmdet_v1",
             beta: float = 1.0 / 9.0) -> tuple[jax.Array, jax.Array]:
  """(classification, box) RPN losses: logits (N, A) and deltas (N, A, 4) over all anchors of
  all levels, against `targets.rpn_targets` vmapped over the N images."""
  avg_factor = rpn_avg_factor(targets.num_pos, targets.num_neg, normalisation)
  loss_cls = weighted_sum(sigmoid_cross_entropy(logits, targets.labels), targets.label_weights,
                          avg_factor)
  loss_box = weighted_sum(smooth_l1(deltas, targets.box_targets, beta), targets.box_weights,
                          avg_factor)
  return loss_cls, loss_box


def rcnn_loss(class_logits: jax.Array, box_deltas: jax.Array,
              targets: targets_lib.RCNNTargets, *, beta: float = 1.0) -> tuple[jax.Array,
                                                                             jax.Array]:
  """(classification, box) losses of an R-CNN stage: class_logits (N, S, K + 1), box_deltas
  (N, S, C, 4) with C = 1 (class-agnostic, Cascade R-CNN) or one set per class indexed like the
  labels (K + 1 with the background: mmdet v1 reg_class_agnostic=False, torchvision); targets
  from `targets.rcnn_targets` vmapped over the N images. A background label beyond the last set
  of deltas (background_index K with K sets) reads the last set, at weight 0."""
  weights = targets.label_weights
  loss_cls = weighted_sum(softmax_cross_entropy(class_logits, targets.labels), weights,
                          jnp.maximum(jnp.sum(weights > 0), 1).astype(jnp.float32))
  if box_deltas.shape[-2] > 1:
    index = jnp.clip(targets.labels, 0, box_deltas.shape[-2] - 1)[..., None, None]
    box_deltas = jnp.take_along_axis(box_deltas, index, axis=-2)
  loss_box = weighted_sum(smooth_l1(box_deltas[..., 0, :], targets.box_targets, beta),
                          targets.box_weights,
                          jnp.maximum(jnp.sum(targets.valid), 1).astype(jnp.float32))
  return loss_cls, loss_box


def mask_loss(mask_logits: jax.Array, mask_targets: jax.Array, labels: jax.Array,
              weights: jax.Array) -> jax.Array:
  """Mask R-CNN's mask loss (mmdet v1 mask_cross_entropy; torchvision maskrcnn_loss): binary
  cross-entropy of the label's channel, averaged over the pixels of the RoIs with weight 1
  (the positives). mask_logits (..., S, m, m, K) NHWC, mask_targets (..., S, m, m) in [0, 1],
  labels and weights (..., S)."""
  index = jnp.clip(labels.astype(jnp.int32), 0, mask_logits.shape[-1] - 1)
  channel = jnp.take_along_axis(mask_logits, index[..., None, None, None], axis=-1)[..., 0]
  pixels = mask_targets.shape[-1] * mask_targets.shape[-2]
  per_roi = jnp.sum(sigmoid_cross_entropy(channel, mask_targets), axis=(-2, -1))
  return weighted_sum(per_roi, weights, jnp.maximum(jnp.sum(weights), 1.0) * pixels)
