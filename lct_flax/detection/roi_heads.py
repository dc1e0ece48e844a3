"""The R-CNN stages of an FPN detector: multi-level RoIAlign of the proposals, then each stage's
box head (and mask head), their targets and losses, and the final detections.

`RoIHeads` takes its box heads and mask heads as arguments (any registered in `head_registry`),
one per stage of `settings.stages`. One stage is Faster R-CNN (mmdetection v1.0
two_stage.py, torchvision roi_heads.py RoIHeads). Several stages with rising IoU thresholds
(0.5/0.6/0.7), finer target stds and loss weights 1/0.5/0.25 are Cascade R-CNN (Cai and
Vasconcelos 2018; mmdet v1 cascade_rcnn.py): each stage trains on the boxes the previous one
refined, and at test time the class scores are the mean of the stages' logits (simple_test).
With mask heads (Mask R-CNN, He et al. 2017) every stage's mask head (RoIAlign 14x14) trains on
the stage's positive RoIs with the stage's loss weight; at test time each runs on the final
detection boxes and their sigmoid probabilities are averaged (mmdet v1 merge_aug_masks).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lct_flax.detection import boxes as boxes_lib
from lct_flax.detection import losses as losses_lib
from lct_flax.detection import mask_targets as mask_targets_lib
from lct_flax.detection import postprocess
from lct_flax.detection import roi_align
from lct_flax.detection import targets as targets_lib
from lct_flax.detection.settings import DetectorSettings

BOX_ROI_SIZE = 7


class RoIHeads(nn.Module):
  """The stages of `settings.stages`, stage i running `box_heads[i]` (and `mask_heads[i]`; no
  mask heads: no masks)."""
  box_heads: Sequence[nn.Module]
  mask_heads: Sequence[nn.Module]
  settings: DetectorSettings

  def __post_init__(self):
    super().__post_init__()
    stages = len(self.settings.stages)
    if len(self.box_heads) != stages or len(self.mask_heads) not in (0, stages):
      raise ValueError(f"{stages} stage(s) need {stages} box heads and {stages} or no mask "
                       f"heads, got {len(self.box_heads)} and {len(self.mask_heads)}.")

  def pool(self, features: Sequence[jax.Array], rois: jax.Array, output_size: int) -> jax.Array:
    """Multi-level RoIAlign (2x2 sampling) of `rois` (N, R, 4) on P2-P5."""
    s = self.settings
    return roi_align.multilevel_roi_align(
        features[:len(s.roi_strides)], rois, strides=s.roi_strides, output_size=output_size,
        sampling_ratio=2, mode=s.convention.roi_align_mode,
        level_mapping=s.convention.roi_level_mapping, chunk=s.roi_chunk)

  def box_stage(self, index: int, features: Sequence[jax.Array], rois: jax.Array):
    """RoIAlign 7x7 of `rois` (N, R, 4) on P2-P5 and stage `index`'s box head."""
    return self.box_heads[index](self.pool(features, rois, BOX_ROI_SIZE))

  def mask_stage(self, index: int, features: Sequence[jax.Array], rois: jax.Array) -> jax.Array:
    """RoIAlign 14x14 of `rois` (N, R, 4) and stage `index`'s mask head: logits (N, R, 28, 28,
    K + 1)."""
    return self.mask_heads[index](self.pool(features, rois, self.settings.mask_roi_size))

  def init_heads(self, features: Sequence[jax.Array]) -> None:
    """Creates every head's variables from one RoI per image."""
    rois = jnp.zeros((features[0].shape[0], 1, 4), jnp.float32)
    for index in range(len(self.box_heads)):
      self.box_stage(index, features, rois)
      if self.mask_heads:
        self.mask_stage(index, features, rois)

  def refine(self, index: int, rois: jax.Array, deltas: jax.Array, labels: jax.Array,
             image_shape: jax.Array) -> jax.Array:
    """Stage `index`'s boxes from its deltas for `labels` (class-specific heads) or shared
    (class-agnostic), clipped to the image (mmdet v1 regress_by_class); no gradient."""
    coder = self.settings.convention.box_coder(self.settings.stages[index].target_stds)
    if deltas.shape[-2] > 1:
      deltas = jnp.take_along_axis(deltas, labels[..., None, None], axis=-2)
    boxes = coder.decode(rois, deltas[..., 0, :])
    boxes = jax.vmap(lambda b, shape: boxes_lib.clip_boxes(b, shape, coder.offset))(boxes,
                                                                                  image_shape)
    return jax.lax.stop_gradient(boxes)

  # -------------------------------------------------------------------------------------------
  # Inference.

  def __call__(self, features: Sequence[jax.Array], rois: jax.Array, valid: jax.Array,
               image_shape: jax.Array) -> postprocess.Detections:
    """Detections of the proposals `rois` (N, P, 4) where `valid`, on P2..P5 `features`."""
    s = self.settings
    class_logits, box_deltas = self.box_stage(0, features, rois)
    logit_sum = class_logits
    for index in range(1, len(s.stages)):   # Cascade R-CNN: each stage refines the last's boxes
      rois = self.refine(index - 1, rois, box_deltas, jnp.argmax(class_logits, -1), image_shape)
      class_logits, box_deltas = self.box_stage(index, features, rois)
      logit_sum = logit_sum + class_logits
    probabilities = jax.nn.softmax(logit_sum / len(s.stages), axis=-1)[..., 1:]
    coder = s.convention.box_coder(s.stages[-1].target_stds)
    if box_deltas.shape[-2] > 1:
      box_deltas = box_deltas[..., 1:, :]            # drop the background's deltas
    boxes = coder.decode(rois[..., None, :], box_deltas)
    boxes = jax.vmap(lambda b, shape: boxes_lib.clip_boxes(b, shape, coder.offset))(
        boxes, image_shape)
    nms = functools.partial(
        postprocess.multiclass_nms, score_threshold=s.score_threshold,
        iou_threshold=s.nms_threshold, max_output=s.max_detections,
        max_candidates=s.max_candidates, offset=s.convention.box_offset,
        min_size=s.convention.min_detection_size, group_nms=s.convention.group_nms)
    detections = jax.vmap(nms)(boxes, probabilities, valid)
    if not self.mask_heads:
      return detections
    return detections._replace(masks=self.mask_probabilities(features, detections.boxes,
                                                             detections.labels))

  def mask_probabilities(self, features: Sequence[jax.Array], boxes: jax.Array,
                         labels: jax.Array) -> jax.Array:
    """(N, D, 28, 28) sigmoid mask probabilities of detections `boxes` (N, D, 4) for their
    `labels` (N, D) 0..K-1, averaged over the stages' heads (mmdet v1 cascade_rcnn.py
    simple_test: merge_aug_masks of every stage's sigmoid on the final boxes)."""
    index = (labels + 1)[..., None, None, None]
    total = 0.0
    for stage in range(len(self.mask_heads)):
      logits = self.mask_stage(stage, features, boxes)
      total = total + jax.nn.sigmoid(jnp.take_along_axis(logits, index, axis=-1)[..., 0])
    return total / len(self.mask_heads)

  # -------------------------------------------------------------------------------------------
  # Training.

  def losses(self, features: Sequence[jax.Array], rois: jax.Array, valid: jax.Array,
             batch: dict, keys: jax.Array) -> tuple[jax.Array, dict]:
    """(the stages' weighted loss, per-stage losses and statistics) of the proposals `rois`
    (N, P, 4) where `valid`, against the batch's ground truth; `keys` (stages, N) drive the
    samplers."""
    s = self.settings
    total, metrics = 0.0, {}
    for index, stage in enumerate(s.stages):
      stage_targets = self.targets(index, keys[index], rois, valid, batch)
      class_logits, box_deltas = self.box_stage(index, features, stage_targets.rois)
      loss_cls, loss_box = losses_lib.rcnn_loss(class_logits, box_deltas, stage_targets,
                                                beta=s.convention.rcnn_smooth_l1_beta)
      total = total + stage.loss_weight * (loss_cls + loss_box)
      if self.mask_heads:
        loss_mask = self.mask_loss(index, features, stage_targets, batch["masks"],
                                   batch["image_shape"])
        total = total + stage.loss_weight * loss_mask
        metrics[f"stage{index}_mask"] = loss_mask
      correct = (jnp.argmax(class_logits, -1) == stage_targets.labels) & stage_targets.valid
      metrics.update({
          f"stage{index}_cls": loss_cls, f"stage{index}_box": loss_box,
          f"stage{index}_accuracy": jnp.sum(correct) / jnp.maximum(
              jnp.sum(stage_targets.valid), 1),
          f"stage{index}_positives": jnp.mean(stage_targets.num_pos.astype(jnp.float32))})
      if index + 1 < len(s.stages):
        rois = self.refine(index, stage_targets.rois, box_deltas, stage_targets.labels,
                           batch["image_shape"])
        valid = stage_targets.valid & ~stage_targets.is_gt
    return total, metrics

  def targets(self, index: int, keys: jax.Array, rois: jax.Array, valid: jax.Array,
              batch: dict) -> targets_lib.RCNNTargets:
    """Stage `index`'s sampled RoIs and targets (`targets.rcnn_targets`, vmapped)."""
    s, conv = self.settings, self.settings.convention
    stage = s.stages[index]
    return jax.vmap(functools.partial(
        targets_lib.rcnn_targets, assigner=conv.rcnn_assigner(stage.iou_threshold),
        sampler=conv.rcnn_sampler(s.rcnn_samples, s.rcnn_positive_fraction),
        coder=conv.box_coder(stage.target_stds), gt_proposals=conv.gt_proposals,
        background_index=0))(keys, rois, valid, batch["boxes"], batch["labels"], batch["valid"])

  def mask_loss(self, index: int, features: Sequence[jax.Array],
                stage_targets: targets_lib.RCNNTargets, masks: jax.Array,
                image_shape: jax.Array) -> jax.Array:
    """Stage `index`'s mask loss (mmdet v1 FCNMaskHead.loss): binary cross-entropy of the gt
    class's 28x28 logits against `mask_targets.mask_targets` of the positive sampled RoIs (gt boxes
    added as proposals included), averaged over their pixels."""
    s = self.settings
    rois = stage_targets.rois[:, :s.mask_positives]
    labels = stage_targets.labels[:, :s.mask_positives]
    positive = stage_targets.valid[:, :s.mask_positives] & (labels > 0)
    mask_targets = jax.vmap(functools.partial(
        mask_targets_lib.mask_targets, size=s.mask_size, mode=s.convention.mask_target))(
            masks, rois, stage_targets.matched_gt[:, :s.mask_positives], image_shape)
    return losses_lib.mask_loss(self.mask_stage(index, features, rois), mask_targets, labels,
                                positive.astype(jnp.float32))
