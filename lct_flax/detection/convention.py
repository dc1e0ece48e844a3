"""Where mmdetection v1.0 and torchvision differ, as one frozen settings object.

The paper trained its detectors in mmdetection v1.0 (github.com/open-mmlab/mmdetection, tag
v1.0.0); torchvision's detection models are the interop anchor. Their box arithmetic differs in
small, systematic ways, each of which is a field here (never a fork of the code). The paper's
configs use `Convention.mmdet_v1()`; a model loaded from torchvision uses
`Convention.torchvision()`. The object is hashable, so it can be a static argument of `jax.jit`.
The numbers of a particular experiment (IoU thresholds, sample sizes, target stds) are not here:
the factory methods below take them, with each reference's defaults.
"""

from __future__ import annotations

import dataclasses
import math

from lct_flax.detection import anchors
from lct_flax.detection import boxes as boxes_lib
from lct_flax.detection import losses
from lct_flax.detection import mask_targets
from lct_flax.detection import roi_align
from lct_flax.detection import targets

FRAMEWORKS = ("mmdet_v1", "torchvision")


@dataclasses.dataclass(frozen=True)
class Convention:
  """The framework-level choices, field by field with the source each value comes from.

  box_offset: 1.0 is mmdet v1's "+1" pixel convention: a box spans x2 - x1 + 1 pixels in areas,
    IoU, NMS, encode/decode and the FPN level mapping, and boxes are clipped to [0, W - 1]
    (mmdet/core/bbox/geometry.py bbox_overlaps, transforms.py bbox2delta/delta2bbox,
    ops/nms/src/nms_kernel.cu). 0.0 is torchvision's continuous convention (ops/boxes.py
    box_iou, clip_boxes_to_image to [0, W]; models/detection/_utils.py BoxCoder).
  anchor_geometry: "mmdet_v1" centres the base anchors of a level at ((s - 1) / 2, (s - 1) / 2)
    with extents (w - 1) / 2 before rounding, and steps them by the nominal stride s
    (mmdet/core/anchor/anchor_generator.py); "torchvision" centres them at 0 with extents w / 2
    before rounding, and steps them by canvas size // feature size per axis, which differs from
    the nominal stride where the canvas is not a multiple of it (P6 of an 800-high canvas: 61)
    (models/detection/anchor_utils.py AnchorGenerator).
  roi_align_mode: "mmdet_v1": the RoI spans [x1, x2 + 1) * scale, its size clamped at 0
    (mmdet/ops/roi_align/src/roi_align_kernel.cu); "legacy": torchvision's aligned=False,
    [x1, x2) * scale with the size clamped at 1, what torchvision's MultiScaleRoIAlign uses
    (ops/poolers.py, csrc/ops/cpu/roi_align_kernel.cpp); "aligned": torchvision's aligned=True,
    shifted by -0.5 px and not clamped.
  roi_level_mapping: "mmdet_v1": level floor(log2(sqrt((w + 1)(h + 1)) / 56 + 1e-6)), clamped to
    the levels (mmdet/models/roi_extractors/single_level.py map_roi_levels, finest_scale 56);
    "torchvision": floor(4 + log2(sqrt(wh) / 224) + 1e-6) - 2, clamped (ops/poolers.py
    LevelMapper).
  low_quality_matches: how a gt's best-overlapping candidates become positives below the IoU
    threshold (`targets.MaxIoUAssigner.low_quality`): "mmdet_v1" (max_iou_assigner.py step 4,
    min_pos_iou 0.3 in the RPN and the stage's IoU in R-CNN); "torchvision" (Matcher
    allow_low_quality_matches=True in the RPN, False in the RoI heads).
  gt_proposals: how the ground-truth boxes join the proposals of an R-CNN stage: "mmdet_v1" puts
    them first and assigns each to itself (core/bbox/samplers/base_sampler.py, assign_result.py
    add_gt_); "torchvision" appends them and matches them like any proposal
    (models/detection/roi_heads.py add_gt_proposals).
  rpn_allowed_border: mmdet v1's allowed_border = 0 excludes anchors that cross the image border
    from RPN training (core/anchor/anchor_target.py anchor_inside_flags); -1 (torchvision) keeps
    every anchor.
  clamp_deltas_below: mmdet v1 clamps the decoded log-size deltas to [-log(1000/16), log(1000/16)]
    (delta2bbox wh_ratio_clip); torchvision clamps from above only (BoxCoder.decode).
  min_proposal_size: RPN proposals narrower or lower than this after clipping are dropped:
    torchvision 1e-3 (rpn.py remove_small_boxes); mmdet v1 min_bbox_size = 0 keeps all.
  min_detection_size: the same for final detections: torchvision 1e-2 (roi_heads.py
    postprocess_detections); mmdet v1 none.
  group_nms: how NMS keeps groups (RPN levels, classes) apart: "exact" never compares boxes of
    different groups (mmdet v1: proposals per level in rpn_head.py get_bboxes_single, classes
    in a loop in multiclass_nms); "coordinate_trick" shifts each group's boxes by group x (the
    largest coordinate + 1) and runs one NMS, which rounds coordinates at the shift (torchvision
    ops/boxes.py batched_nms: _batched_nms_coordinate_trick on CUDA up to 25,000 boxes and on
    the CPU up to 1,000, the exact _batched_nms_vanilla beyond; `boxes.batched_nms`).
  first_label: the label id of the first foreground class in the detections reported
    (`lct_flax.detection.detect`): 0 in mmdet v1, whose multiclass_nms numbers the classes
    0..K-1 (core/post_processing/bbox_nms.py, labels i - 1); 1 in torchvision, whose labels are
    the classifier's columns with the background at 0 (roi_heads.py postprocess_detections:
    COCO category ids 1..90).
  rpn_loss_normalisation: "mmdet_v1" divides both RPN losses by the sum over images of
    max(#pos, 1) + max(#neg, 1) (anchor_heads/anchor_head.py loss, anchor_target.py);
    "torchvision" by the number of sampled anchors (rpn.py compute_loss).
  rcnn_smooth_l1_beta: the R-CNN box loss's smooth L1 beta: 1.0 in mmdet v1's configs
    (configs/faster_rcnn_r101_fpn_1x.py), 1/9 in torchvision (roi_heads.py fastrcnn_loss).
  mask_target: how Mask R-CNN's 28x28 targets come from a positive RoI and its instance mask
    (`mask_targets.mask_targets`): "mmdet_v1" crops the mask with the RoI truncated to integers
    (x2 - x1 + 1 pixels), resizes the crop bilinearly (cv2 INTER_LINEAR) and rounds it to 0/1
    (mmdet/core/mask/mask_target.py); "torchvision" RoIAligns the mask (aligned=False, scale 1)
    into soft targets (roi_heads.py project_masks_on_boxes), with a fixed 2x2 sampling grid per
    bin where torchvision's roi_align default takes ceil(RoI side / 28), which static shapes
    cannot have.
  mask_paste: how a detection's 28x28 mask probabilities go into the image
    (`segmentation.paste_masks`): "mmdet_v1" truncates the box to integers and resizes the
    probabilities bilinearly to its x2 - x1 + 1 by y2 - y1 + 1 pixels (mask_heads/
    fcn_mask_head.py get_seg_masks); "torchvision" pads them with one zero pixel, scales the box
    by 30/28 about its centre, truncates and resizes (roi_heads.py paste_masks_in_image). Both
    binarise at 0.5 for COCO (mmdet's mask_thr_binary; torchvision's reference evaluation).
  """
  box_offset: float
  anchor_geometry: str
  roi_align_mode: str
  roi_level_mapping: str
  low_quality_matches: str
  gt_proposals: str
  rpn_allowed_border: float
  clamp_deltas_below: bool
  min_proposal_size: float
  min_detection_size: float
  group_nms: str
  first_label: int
  rpn_loss_normalisation: str
  rcnn_smooth_l1_beta: float
  mask_target: str
  mask_paste: str

  def __post_init__(self):
    for name, value, allowed in (
        ("anchor_geometry", self.anchor_geometry, anchors.GEOMETRIES),
        ("roi_align_mode", self.roi_align_mode, roi_align.ROI_ALIGN_MODES),
        ("roi_level_mapping", self.roi_level_mapping, roi_align.LEVEL_MAPPINGS),
        ("low_quality_matches", self.low_quality_matches, FRAMEWORKS),
        ("gt_proposals", self.gt_proposals, targets.GT_PROPOSALS),
        ("group_nms", self.group_nms, boxes_lib.GROUP_NMS),
        ("rpn_loss_normalisation", self.rpn_loss_normalisation, losses.RPN_NORMALISATIONS),
        ("mask_target", self.mask_target, mask_targets.MASK_TARGETS),
        ("mask_paste", self.mask_paste, FRAMEWORKS)):
      if value not in allowed:
        raise ValueError(f"Convention.{name} {value!r} is unknown; choose one of {allowed}.")
    if self.box_offset not in (0.0, 1.0):
      raise ValueError(f"Convention.box_offset must be 0.0 or 1.0, got {self.box_offset}.")

  @classmethod
  def mmdet_v1(cls) -> "Convention":
    """mmdetection v1.0, the framework of the paper's Tables 6-7."""
    return cls(box_offset=1.0, anchor_geometry="mmdet_v1", roi_align_mode="mmdet_v1",
               roi_level_mapping="mmdet_v1", low_quality_matches="mmdet_v1",
               gt_proposals="mmdet_v1", rpn_allowed_border=0.0,
               clamp_deltas_below=True, min_proposal_size=0.0, min_detection_size=0.0,
               group_nms="exact", first_label=0, rpn_loss_normalisation="mmdet_v1",
               rcnn_smooth_l1_beta=1.0, mask_target="mmdet_v1", mask_paste="mmdet_v1")

  @classmethod
  def torchvision(cls) -> "Convention":
    """torchvision's Faster/Mask R-CNN (models/detection, v1 weights)."""
    return cls(box_offset=0.0, anchor_geometry="torchvision", roi_align_mode="legacy",
               roi_level_mapping="torchvision", low_quality_matches="torchvision",
               gt_proposals="torchvision", rpn_allowed_border=-1.0, clamp_deltas_below=False,
               min_proposal_size=1e-3, min_detection_size=1e-2,
               group_nms="coordinate_trick", first_label=1,
               rpn_loss_normalisation="torchvision", rcnn_smooth_l1_beta=1.0 / 9.0,
               mask_target="torchvision", mask_paste="torchvision")

  def box_coder(self, stds=(1.0, 1.0, 1.0, 1.0),
                means=(0.0, 0.0, 0.0, 0.0)) -> boxes_lib.BoxCoder:
    """The delta coder of this convention. RPN: the default stds (both references); R-CNN:
    stds (0.1, 0.1, 0.2, 0.2) (mmdet v1 target_stds; torchvision's weights (10, 10, 5, 5));
    Cascade R-CNN stages 2-3: (0.05, 0.05, 0.1, 0.1) and (0.033, 0.033, 0.067, 0.067)."""
    return boxes_lib.BoxCoder(means=tuple(means), stds=tuple(stds), offset=self.box_offset,
                              max_log_ratio=math.log(1000.0 / 16.0),
                              clamp_below=self.clamp_deltas_below)

  def rpn_assigner(self, pos_iou_thr: float = 0.7, neg_iou_thr: float = 0.3,
                   ignore_iof_thr: float = -1.0) -> targets.MaxIoUAssigner:
    """The RPN's anchor assigner: IoU 0.7 / 0.3 in both references; low-quality matches from
    min_pos_iou 0.3 (mmdet v1 train_cfg.rpn) or from any overlap (torchvision)."""
    mmdet = self.low_quality_matches == "mmdet_v1"
    return targets.MaxIoUAssigner(
        pos_iou_thr=pos_iou_thr, neg_iou_thr=neg_iou_thr, min_pos_iou=0.3 if mmdet else 0.0,
        low_quality=self.low_quality_matches, ignore_iof_thr=ignore_iof_thr,
        box_offset=self.box_offset)

  def rcnn_assigner(self, iou_thr: float = 0.5,
                    ignore_iof_thr: float = -1.0) -> targets.MaxIoUAssigner:
    """An R-CNN stage's proposal assigner: positive at IoU >= iou_thr, negative below (0.5;
    Cascade R-CNN stages 0.6 and 0.7); mmdet v1 keeps its low-quality step with min_pos_iou =
    iou_thr, torchvision has none."""
    mmdet = self.low_quality_matches == "mmdet_v1"
    return targets.MaxIoUAssigner(
        pos_iou_thr=iou_thr, neg_iou_thr=iou_thr, min_pos_iou=iou_thr if mmdet else 0.0,
        low_quality="mmdet_v1" if mmdet else "none", ignore_iof_thr=ignore_iof_thr,
        box_offset=self.box_offset)

  @staticmethod
  def rpn_sampler(num: int = 256, pos_fraction: float = 0.5) -> targets.RandomSampler:
    """256 anchors per image, at most half positive (both references)."""
    return targets.RandomSampler(num=num, pos_fraction=pos_fraction)

  @staticmethod
  def rcnn_sampler(num: int = 512, pos_fraction: float = 0.25) -> targets.RandomSampler:
    """512 RoIs per image, at most a quarter positive (both references)."""
    return targets.RandomSampler(num=num, pos_fraction=pos_fraction)
