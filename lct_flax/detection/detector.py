"""Two-stage FPN detectors: Faster R-CNN (Ren et al. 2015), Cascade R-CNN (Cai and Vasconcelos
2018) and their Mask R-CNN (He et al. 2017) versions on our ResNets with any attention block, the
detectors of the paper's Tables 6 and 7.

`TwoStageDetector` = ResNet C2-C5 (`models.ResNet(features_only=True)`) -> FPN P2-P6 -> RPN
(anchors of one scale and 3 aspect ratios per level) -> proposals -> R-CNN stages (multi-level
RoIAlign 7x7 + two-FC box head). One stage is Faster R-CNN; three stages with rising IoU
thresholds (0.5/0.6/0.7), finer target stds and loss weights 1/0.5/0.25 are Cascade R-CNN, whose
test-time class scores are the mean of the stages' logits (mmdetection v1.0
cascade_rcnn.py simple_test). With `DetectorSettings.with_masks` every stage also has a mask head
(multi-level RoIAlign 14x14 + `roi_heads.MaskHead`) trained on the stage's positive RoIs with the
stage's loss weight; at test time each stage's head runs on the final detection boxes and their
sigmoid probabilities are averaged (mmdet v1 merge_aug_masks; Mask R-CNN has the one stage).
Everything runs batched with static shapes under `jax.jit`:

* `model.apply(variables, batch, key, method="losses")`: the training losses (mmdet v1's
  samplers, assigners, targets and normalisation; `lct_flax.detection.targets`, `losses`);
* `model.apply(variables, images, image_shape)`: `postprocess.Detections` per image, boxes in the
  pixels of the resized image on its canvas (and 28x28 mask probabilities with masks; pasting
  them into the image is host work: `segmentation.paste_masks`).

Images arrive as uint8 NHWC canvases; they are normalised with the ImageNet mean/std on the
device and the padding beyond each image's `image_shape` is set to 0 after normalisation, as
both references pad. Settings that differ between mmdetection v1 (the paper's) and torchvision
(the interop anchor) come from `DetectorSettings.convention`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lct_flax import models
from lct_flax.detection import anchors as anchors_lib
from lct_flax.detection import boxes as boxes_lib
from lct_flax.detection import losses as losses_lib
from lct_flax.detection import masks as masks_lib
from lct_flax.detection import postprocess
from lct_flax.detection import roi_align
from lct_flax.detection import targets as targets_lib
from lct_flax.detection.convention import Convention
from lct_flax.detection.fpn import FPN
from lct_flax.detection.roi_heads import BoxHead
from lct_flax.detection.roi_heads import MaskHead
from lct_flax.detection.rpn import RPNHead

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class ProposalSettings:
  """RPN proposals per image: the best `nms_pre` anchors of each level, NMS at `iou_threshold`,
  `nms_post` kept per level, the best `max_num` overall (`postprocess.rpn_proposals`)."""
  nms_pre: int
  nms_post: int
  max_num: int
  iou_threshold: float = 0.7


@dataclasses.dataclass(frozen=True)
class StageSettings:
  """One R-CNN stage: its assigner's IoU threshold, box target stds and loss weight."""
  iou_threshold: float
  target_stds: tuple
  loss_weight: float


FASTER_RCNN_STAGES = (StageSettings(0.5, (0.1, 0.1, 0.2, 0.2), 1.0),)
CASCADE_RCNN_STAGES = (StageSettings(0.5, (0.1, 0.1, 0.2, 0.2), 1.0),
                       StageSettings(0.6, (0.05, 0.05, 0.1, 0.1), 0.5),
                       StageSettings(0.7, (0.033, 0.033, 0.067, 0.067), 0.25))


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
  """Everything but the backbone, with the paper's values (mmdetection v1.0
  configs/faster_rcnn_r101_fpn_1x.py and cascade_rcnn_r101_fpn_1x.py) as defaults.

  `max_candidates` caps the (box, class) pairs above the score threshold that go into the final
  per-class NMS (static shapes need a cap; the lowest-scoring pairs beyond it are dropped,
  `Detections.num_candidates` tells whether that happened).

  `with_masks` adds a mask head per stage (mmdet v1 configs/mask_rcnn_r101_fpn_1x.py and
  cascade_mask_rcnn_r101_fpn_1x.py: RoIAlign 14x14 with 2x2 sampling on P2-P5, FCNMaskHead with
  four convolutions of `mask_hidden` = 256 channels, 28x28 targets); it trains on the
  `mask_positives` slots of each stage's sample, where the sampler puts its positives.
  """
  num_classes: int
  stages: tuple = FASTER_RCNN_STAGES
  class_agnostic: bool = False
  convention: Convention = Convention.mmdet_v1()
  strides: tuple = anchors_lib.FPN_STRIDES
  anchor_ratios: tuple = anchors_lib.ASPECT_RATIOS
  anchor_scales: tuple = anchors_lib.SCALES
  rpn_train: ProposalSettings = ProposalSettings(2000, 2000, 2000)
  rpn_test: ProposalSettings = ProposalSettings(1000, 1000, 1000)
  rpn_samples: int = 256
  rpn_positive_fraction: float = 0.5
  rcnn_samples: int = 512
  rcnn_positive_fraction: float = 0.25
  score_threshold: float = 0.05
  nms_threshold: float = 0.5
  max_detections: int = 100
  max_candidates: int = 2000
  pixel_mean: tuple = IMAGENET_MEAN_RGB
  pixel_std: tuple = IMAGENET_STD_RGB
  roi_chunk: Optional[int] = roi_align.DEFAULT_CHUNK
  fpn_channels: int = 256        # smaller for tiny test and demo detectors
  fc_hidden: int = 1024
  with_masks: bool = False
  mask_hidden: int = 256
  mask_roi_size: int = 14

  @property
  def num_anchors(self) -> int:
    return len(self.anchor_ratios) * len(self.anchor_scales)

  @property
  def roi_strides(self) -> tuple:
    """The levels RoIs are pooled from: P2-P5 (the RPN also sees P6)."""
    return self.strides[:4]

  @property
  def mask_size(self) -> int:
    """The side of the mask logits and targets: the RoI features' doubled (28)."""
    return 2 * self.mask_roi_size

  @property
  def mask_positives(self) -> int:
    """The sample slots that can hold positives (512 x 0.25 = 128): the mask heads' RoIs."""
    return int(self.rcnn_samples * self.rcnn_positive_fraction)


def normalize_images(images: jax.Array, image_shape: jax.Array, mean: Sequence[float],
                     std: Sequence[float]) -> jax.Array:
  """uint8 (N, H, W, 3) canvases -> float32 (x - mean) / std, 0 beyond each image's (h, w)."""
  x = (images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std,
                                                                                   jnp.float32)
  rows = jnp.arange(images.shape[1])[None, :, None] < image_shape[:, 0, None, None]
  cols = jnp.arange(images.shape[2])[None, None, :] < image_shape[:, 1, None, None]
  return jnp.where((rows & cols)[..., None], x, 0.0)


class TwoStageDetector(nn.Module):
  """FPN Faster / Cascade R-CNN, with masks Mask / Cascade Mask R-CNN; `backbone` is a
  `models.ResNet` (its classifier is never used)."""
  backbone: models.ResNet
  settings: DetectorSettings
  dtype: Any = jnp.float32

  def setup(self):
    s = self.settings
    self.neck = FPN(channels=s.fpn_channels, dtype=self.dtype)
    self.rpn_head = RPNHead(num_anchors=s.num_anchors, channels=s.fpn_channels, dtype=self.dtype)
    self.box_heads = [BoxHead(s.num_classes, class_agnostic=s.class_agnostic, hidden=s.fc_hidden,
                              dtype=self.dtype) for _ in s.stages]
    if s.with_masks:
      self.mask_heads = [MaskHead(s.num_classes, hidden=s.mask_hidden, dtype=self.dtype)
                         for _ in s.stages]

  # -------------------------------------------------------------------------------------------
  # Shared parts.

  def pyramid(self, images: jax.Array, image_shape: jax.Array, train: bool) -> list[jax.Array]:
    """P2..P6 of uint8 canvases (N, H, W, 3)."""
    s = self.settings
    x = normalize_images(images, image_shape, s.pixel_mean, s.pixel_std)
    c = self.backbone(x, train=train, features_only=True)
    return self.neck([c[name] for name in models.FEATURE_NAMES])

  def anchors(self, canvas_shape: Sequence[int], features: Sequence[jax.Array]) -> list:
    """Anchors of every level (NumPy constants of the canvas shape)."""
    s = self.settings
    return anchors_lib.level_anchors(
        canvas_shape, s.strides, s.anchor_ratios, s.anchor_scales,
        geometry=s.convention.anchor_geometry, shapes=[f.shape[1:3] for f in features])

  def proposals(self, logits, deltas, anchors, image_shape, cfg: ProposalSettings):
    """vmapped `postprocess.rpn_proposals`: boxes (N, P, 4), scores (N, P), valid (N, P)."""
    s = self.settings
    propose = functools.partial(
        postprocess.rpn_proposals, coder=s.convention.box_coder(), nms_pre=cfg.nms_pre,
        nms_post=cfg.nms_post, max_num=cfg.max_num, iou_threshold=cfg.iou_threshold,
        min_size=s.convention.min_proposal_size, group_nms=s.convention.group_nms)
    return jax.vmap(propose, in_axes=(0, 0, None, 0))(logits, deltas,
                                                       [jnp.asarray(a) for a in anchors],
                                                       image_shape)

  def pool(self, features: Sequence[jax.Array], rois: jax.Array, output_size: int) -> jax.Array:
    """Multi-level RoIAlign (2x2 sampling) of `rois` (N, R, 4) on P2-P5."""
    s = self.settings
    return roi_align.multilevel_roi_align(
        features[:len(s.roi_strides)], rois, strides=s.roi_strides, output_size=output_size,
        sampling_ratio=2, mode=s.convention.roi_align_mode,
        level_mapping=s.convention.roi_level_mapping, chunk=s.roi_chunk)

  def box_stage(self, index: int, features: Sequence[jax.Array], rois: jax.Array):
    """RoIAlign 7x7 of `rois` (N, R, 4) on P2-P5 and stage `index`'s head."""
    return self.box_heads[index](self.pool(features, rois, 7))

  def mask_stage(self, index: int, features: Sequence[jax.Array], rois: jax.Array) -> jax.Array:
    """RoIAlign 14x14 of `rois` (N, R, 4) and stage `index`'s mask head: logits (N, R, 28, 28,
    K + 1)."""
    return self.mask_heads[index](self.pool(features, rois, self.settings.mask_roi_size))

  def mask_probabilities(self, features: Sequence[jax.Array], boxes: jax.Array,
                         labels: jax.Array) -> jax.Array:
    """(N, D, 28, 28) sigmoid mask probabilities of detections `boxes` (N, D, 4) for their
    `labels` (N, D) 0..K-1, averaged over the stages' heads (mmdet v1 cascade_rcnn.py
    simple_test: merge_aug_masks of every stage's sigmoid on the final boxes)."""
    index = (labels + 1)[..., None, None, None]
    total = 0.0
    for stage in range(len(self.settings.stages)):
      logits = self.mask_stage(stage, features, boxes)
      total = total + jax.nn.sigmoid(jnp.take_along_axis(logits, index, axis=-1)[..., 0])
    return total / len(self.settings.stages)

  def refine(self, index: int, rois: jax.Array, deltas: jax.Array, labels: jax.Array,
             image_shape: jax.Array) -> jax.Array:
    """Stage `index`'s boxes from its deltas for `labels` (class-specific heads) or shared
    (class-agnostic), clipped to the image (mmdet v1 regress_by_class); no gradient."""
    s = self.settings
    coder = s.convention.box_coder(s.stages[index].target_stds)
    if deltas.shape[-2] > 1:
      deltas = jnp.take_along_axis(deltas, labels[..., None, None], axis=-2)
    boxes = coder.decode(rois, deltas[..., 0, :])
    boxes = jax.vmap(lambda b, shape: boxes_lib.clip_boxes(b, shape, coder.offset))(boxes,
                                                                                  image_shape)
    return jax.lax.stop_gradient(boxes)

  def init_variables(self, images: jax.Array) -> None:
    """Creates every variable cheaply: `model.init(key, images, method="init_variables")` runs
    the backbone, FPN, RPN head and each box head once, without proposals or NMS."""
    features = self.pyramid(images, jnp.asarray([images.shape[1:3]] * images.shape[0]),
                            train=False)
    self.rpn_head(features)
    rois = jnp.zeros((images.shape[0], 1, 4), jnp.float32)
    for index in range(len(self.settings.stages)):
      self.box_stage(index, features, rois)
      if self.settings.with_masks:
        self.mask_stage(index, features, rois)

  # -------------------------------------------------------------------------------------------
  # Inference.

  def __call__(self, images: jax.Array, image_shape: jax.Array) -> postprocess.Detections:
    """Detections of uint8 canvases (N, H, W, 3) whose images occupy `image_shape` (N, 2)."""
    s = self.settings
    features = self.pyramid(images, image_shape, train=False)
    logits, deltas = self.rpn_head(features)
    anchors = self.anchors(images.shape[1:3], features)
    rois, _, valid = self.proposals(logits, deltas, anchors, image_shape, s.rpn_test)
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
    if not s.with_masks:
      return detections
    return detections._replace(masks=self.mask_probabilities(features, detections.boxes,
                                                             detections.labels))

  # -------------------------------------------------------------------------------------------
  # Training.

  def losses(self, batch: dict, key: jax.Array, train: bool = True) -> tuple[jax.Array, dict]:
    """(total loss, per-part losses and statistics) of a batch with ground truth (the data
    contract: image, image_shape, boxes, labels 0..K-1, valid, and with masks the packed
    instance masks; crowd instances are not valid and are left out of matching, as the paper's
    configs do with ignore_iof_thr=-1)."""
    s = self.settings
    conv = s.convention
    images, image_shape = batch["image"], batch["image_shape"]
    gt_boxes, gt_labels, gt_valid = batch["boxes"], batch["labels"], batch["valid"]
    n = images.shape[0]
    keys = jax.random.split(key, (1 + len(s.stages), n))

    features = self.pyramid(images, image_shape, train=train)
    logits, deltas = self.rpn_head(features)
    anchors = self.anchors(images.shape[1:3], features)
    all_anchors = jnp.asarray(np.concatenate(anchors))
    anchor_valid = jax.vmap(lambda shape: anchors_lib.inside_image(
        all_anchors, shape, conv.rpn_allowed_border))(image_shape)
    rpn = jax.vmap(functools.partial(
        targets_lib.rpn_targets, assigner=conv.rpn_assigner(),
        sampler=conv.rpn_sampler(s.rpn_samples, s.rpn_positive_fraction),
        coder=conv.box_coder()), in_axes=(0, None, 0, 0, 0))(
            keys[0], all_anchors, anchor_valid, gt_boxes, gt_valid)
    rpn_cls, rpn_box = losses_lib.rpn_loss(
        jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1), rpn,
        normalisation=conv.rpn_loss_normalisation)
    metrics = {"rpn_cls": rpn_cls, "rpn_box": rpn_box}
    total = rpn_cls + rpn_box

    rois, _, rois_valid = self.proposals(logits, deltas, anchors, image_shape, s.rpn_train)
    for index, stage in enumerate(s.stages):
      stage_targets = jax.vmap(functools.partial(
          targets_lib.rcnn_targets, assigner=conv.rcnn_assigner(stage.iou_threshold),
          sampler=conv.rcnn_sampler(s.rcnn_samples, s.rcnn_positive_fraction),
          coder=conv.box_coder(stage.target_stds), gt_proposals=conv.gt_proposals,
          background_index=0))(keys[1 + index], rois, rois_valid, gt_boxes, gt_labels, gt_valid)
      class_logits, box_deltas = self.box_stage(index, features, stage_targets.rois)
      loss_cls, loss_box = losses_lib.rcnn_loss(class_logits, box_deltas, stage_targets,
                                                beta=conv.rcnn_smooth_l1_beta)
      total = total + stage.loss_weight * (loss_cls + loss_box)
      if s.with_masks:
        loss_mask = self.mask_loss(index, features, stage_targets, batch["masks"], image_shape)
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
                           image_shape)
        rois_valid = stage_targets.valid & ~stage_targets.is_gt
    metrics["rpn_positives"] = jnp.mean(rpn.num_pos.astype(jnp.float32))
    return total, metrics

  def mask_loss(self, index: int, features: Sequence[jax.Array],
                stage_targets: targets_lib.RCNNTargets, masks: jax.Array,
                image_shape: jax.Array) -> jax.Array:
    """Stage `index`'s mask loss (mmdet v1 FCNMaskHead.loss): binary cross-entropy of the gt
    class's 28x28 logits against `masks.mask_targets` of the positive sampled RoIs (gt boxes
    added as proposals included), averaged over their pixels."""
    s = self.settings
    rois = stage_targets.rois[:, :s.mask_positives]
    labels = stage_targets.labels[:, :s.mask_positives]
    positive = stage_targets.valid[:, :s.mask_positives] & (labels > 0)
    mask_targets = jax.vmap(functools.partial(
        masks_lib.mask_targets, size=s.mask_size, mode=s.convention.mask_target))(
            masks, rois, stage_targets.matched_gt[:, :s.mask_positives], image_shape)
    return losses_lib.mask_loss(self.mask_stage(index, features, rois), mask_targets, labels,
                                positive.astype(jnp.float32))


def create_detector(backbone_name: str, *, num_classes: int, attention: Optional[str] = None,
                    cascade: bool = False, masks: bool = False,
                    convention: Optional[Convention] = None,
                    dtype: Any = jnp.float32, frozen_stages: int = 1, norm_eval: bool = True,
                    frozen_bn: bool = False, width: float = 1.0,
                    **overrides) -> TwoStageDetector:
  """Faster R-CNN (or Cascade R-CNN with `cascade`; their Mask R-CNN versions with `masks`) with
  an FPN on `backbone_name` (resnet18..152) with `attention`. The paper's fine-tuning
  (mmdetection v1's ResNet defaults) freezes the stem and layer1 (`frozen_stages=1`) and every
  BatchNorm's statistics (`norm_eval`; `frozen_bn` also freezes their scale and bias).
  `overrides` go to DetectorSettings (`attention_kwargs` to the attention blocks)."""
  attention_kwargs = overrides.pop("attention_kwargs", {})
  backbone = models.create_model(backbone_name, attention=attention, dtype=dtype, width=width,
                                 frozen_stages=frozen_stages, norm_eval=norm_eval,
                                 frozen_bn=frozen_bn, **attention_kwargs)
  settings = DetectorSettings(
      num_classes=num_classes, stages=CASCADE_RCNN_STAGES if cascade else FASTER_RCNN_STAGES,
      class_agnostic=cascade, convention=convention or Convention.mmdet_v1(), with_masks=masks,
      **overrides)
  return TwoStageDetector(backbone=backbone, settings=settings, dtype=dtype)
