"""The settings of a two-stage FPN detector, with the paper's values (mmdetection v1.0) as
defaults: one `DetectorSettings` describes the whole detector, and each part (`rpn.RPN`,
`roi_heads.RoIHeads`) reads its own entries from it. Plain dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Optional

from lct_flax import dataset_defaults
from lct_flax.detection import anchors as anchors_lib
from lct_flax.detection import head_registry
from lct_flax.detection import roi_align
from lct_flax.detection.convention import Convention


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
  pixel_mean: tuple = dataset_defaults.IMAGENET_MEAN_RGB
  pixel_std: tuple = dataset_defaults.IMAGENET_STDDEV_RGB
  roi_chunk: Optional[int] = roi_align.DEFAULT_CHUNK
  fpn_channels: int = head_registry.FPN_CHANNELS    # smaller for tiny test and demo detectors
  fc_hidden: int = head_registry.FC_HIDDEN
  with_masks: bool = False
  mask_hidden: int = head_registry.MASK_HIDDEN
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
