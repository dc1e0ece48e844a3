"""Training targets: the max-IoU assigner, the random sampler, RPN and R-CNN stage targets.

All functions here are of one image (`jax.vmap` them over a batch, with one PRNG key per
image) and have static shapes: boxes, ground truth and outputs are fixed-size arrays with
boolean validity masks. Ground truth arrives as in the data contract: gt_boxes (M, 4),
gt_labels (M,) in 0..K-1, gt_valid (M,) (real, non-crowd instances); crowd boxes may be passed
as ignore regions. References: mmdetection v1.0 (mmdet/core/bbox/assigners/max_iou_assigner.py,
samplers/random_sampler.py and base_sampler.py, core/anchor/anchor_target.py,
core/bbox/bbox_target.py) and torchvision (models/detection/_utils.py Matcher and
BalancedPositiveNegativeSampler, rpn.py, roi_heads.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from lct_flax.detection import boxes as boxes_lib
from lct_flax.detection.ranking import ranked

LOW_QUALITY_MATCHES = ("mmdet_v1", "torchvision", "none")
GT_PROPOSALS = ("mmdet_v1", "torchvision", "none")


class Assignment(NamedTuple):
  """Per candidate box: the matched ground truth (0 where not positive), whether it is a
  positive or a negative (neither: ignored), and its best IoU (-1 if invalid or ignored)."""
  gt_index: jax.Array   # (N,) int32
  positive: jax.Array   # (N,) bool
  negative: jax.Array   # (N,) bool
  max_iou: jax.Array    # (N,) float32


@dataclasses.dataclass(frozen=True)
class MaxIoUAssigner:
  """Assigns each candidate box to the ground truth it overlaps most.

  mmdet v1 MaxIoUAssigner, in its order: (1) all ignored; (2) negative if 0 <= max IoU <
  neg_iou_thr; (3) positive if max IoU >= pos_iou_thr, matched to the argmax; (4) low-quality
  matches, per `low_quality`:
    "mmdet_v1": for each gt whose best IoU >= min_pos_iou, the candidates with that IoU (all of
      them if gt_max_assign_all, else the first) become positives of that gt (later gts win);
    "torchvision": Matcher(allow_low_quality_matches=True): such candidates become positives of
      their own argmax gt (min_pos_iou = 0 reproduces torchvision, which has no minimum);
    "none": torchvision's R-CNN Matcher.
  With no valid ground truth every valid candidate is negative (both references). Candidates
  whose IoF with an ignore region (crowd box) exceeds ignore_iof_thr > 0 get IoU -1 with every
  gt, so they end up ignored (mmdet ignore_wrt_candidates=True; the paper's configs set
  ignore_iof_thr=-1: crowd boxes are simply left out). IoU uses `box_offset` (mmdet v1: 1).
  """
  pos_iou_thr: float
  neg_iou_thr: float
  min_pos_iou: float = 0.0
  low_quality: str = "mmdet_v1"
  gt_max_assign_all: bool = True
  ignore_iof_thr: float = -1.0
  box_offset: float = 0.0

  def __post_init__(self):
    if self.low_quality not in LOW_QUALITY_MATCHES:
      raise ValueError(f"MaxIoUAssigner.low_quality {self.low_quality!r} is unknown; choose one "
                       f"of {LOW_QUALITY_MATCHES}.")
    if self.neg_iou_thr > self.pos_iou_thr:
      raise ValueError(f"MaxIoUAssigner: neg_iou_thr {self.neg_iou_thr} exceeds pos_iou_thr "
                       f"{self.pos_iou_thr}; use neg_iou_thr <= pos_iou_thr.")

  def assign(self, boxes: jax.Array, box_valid: jax.Array, gt_boxes: jax.Array,
             gt_valid: jax.Array, ignore_boxes: Optional[jax.Array] = None,
             ignore_valid: Optional[jax.Array] = None) -> Assignment:
    """boxes (N, 4) candidates with box_valid (N,); gt_boxes (M, 4) with gt_valid (M,);
    optional ignore regions (K, 4) with ignore_valid (K,)."""
    pair_valid = gt_valid[:, None] & box_valid[None, :]
    iou = boxes_lib.pairwise_iou(gt_boxes, boxes, self.box_offset)
    overlaps = jnp.where(pair_valid, iou, -1.0)
    if self.ignore_iof_thr > 0 and ignore_boxes is not None:
      iof = boxes_lib.pairwise_iof(boxes, ignore_boxes, self.box_offset)
      iof = jnp.where(ignore_valid[None, :], iof, -1.0)
      ignored = jnp.max(iof, axis=1, initial=-1.0) > self.ignore_iof_thr
      overlaps = jnp.where(ignored[None, :], -1.0, overlaps)
    max_iou = jnp.max(overlaps, axis=0)
    gt_index = jnp.argmax(overlaps, axis=0).astype(jnp.int32)
    negative = box_valid & (max_iou >= 0.0) & (max_iou < self.neg_iou_thr)
    positive = box_valid & (max_iou >= self.pos_iou_thr)
    if self.low_quality != "none":
      gt_best = jnp.max(overlaps, axis=1, keepdims=True)
      best = pair_valid & (gt_best >= self.min_pos_iou) & (overlaps == gt_best)
      if self.low_quality == "mmdet_v1" and not self.gt_max_assign_all:
        first = jnp.argmax(overlaps, axis=1)[:, None] == jnp.arange(boxes.shape[0])[None, :]
        best &= first
      extra = jnp.any(best, axis=0)
      if self.low_quality == "mmdet_v1":
        last_gt = (best.shape[0] - 1 - jnp.argmax(best[::-1], axis=0)).astype(jnp.int32)
        gt_index = jnp.where(extra, last_gt, gt_index)
      positive |= extra
      negative &= ~extra
    has_gt = jnp.any(gt_valid)
    positive &= has_gt
    negative = jnp.where(has_gt, negative, box_valid)
    gt_index = jnp.where(positive, gt_index, 0)
    return Assignment(gt_index, positive, negative, max_iou)


class Sample(NamedTuple):
  """A fixed-size sample: `indices` into the candidates, positives first, then negatives, then
  unfilled slots (valid False, index 0)."""
  indices: jax.Array    # (num,) int32
  positive: jax.Array   # (num,) bool
  valid: jax.Array      # (num,) bool
  num_pos: jax.Array    # () int32
  num_neg: jax.Array    # () int32


@dataclasses.dataclass(frozen=True)
class RandomSampler:
  """mmdet v1 RandomSampler / torchvision BalancedPositiveNegativeSampler.

  num_pos = min(#positives, int(num * pos_fraction)); num_neg = min(#negatives, num - num_pos),
  further capped at int(neg_pos_ub * max(num_pos, 1)) when neg_pos_ub >= 0 (the paper's configs:
  -1). Each subset is uniform without replacement, drawn from the PRNG key: the same key gives
  the same sample.
  """
  num: int
  pos_fraction: float
  neg_pos_ub: float = -1.0

  def sample(self, key: jax.Array, positive: jax.Array, negative: jax.Array) -> Sample:
    """positive, negative (N,) bool (disjoint) -> Sample of `num` slots."""
    n = positive.shape[0]
    max_pos = int(self.num * self.pos_fraction)
    key_pos, key_neg = jax.random.split(key)
    pos_order = _random_subset(key_pos, positive, max(min(max_pos, n), 1))
    neg_order = _random_subset(key_neg, negative, min(self.num, n))
    num_pos = jnp.minimum(jnp.sum(positive, dtype=jnp.int32), max_pos)
    neg_cap = self.num - num_pos
    if self.neg_pos_ub >= 0:
      bound = jnp.floor(self.neg_pos_ub * jnp.maximum(num_pos, 1)).astype(jnp.int32)
      neg_cap = jnp.minimum(neg_cap, bound)
    num_neg = jnp.minimum(jnp.sum(negative, dtype=jnp.int32), neg_cap)
    slot = jnp.arange(self.num, dtype=jnp.int32)
    is_pos = slot < num_pos
    from_pos = pos_order[jnp.clip(slot, 0, pos_order.shape[0] - 1)]
    from_neg = neg_order[jnp.clip(slot - num_pos, 0, neg_order.shape[0] - 1)]
    valid = slot < num_pos + num_neg
    indices = jnp.where(valid, jnp.where(is_pos, from_pos, from_neg), 0)
    return Sample(indices, is_pos, valid, num_pos, num_neg)


def _random_subset(key: jax.Array, eligible: jax.Array, k: int) -> jax.Array:
  """Indices of k elements in random order, the eligible ones first: the top k of iid uniform
  priorities (ineligible ones get -1), i.e. a uniform random subset without replacement."""
  priority = jnp.where(eligible, jax.random.uniform(key, eligible.shape), -1.0)
  return ranked(priority, k)[1].astype(jnp.int32)


class RPNTargets(NamedTuple):
  """Dense RPN targets over all anchors of all levels (concatenated in level order)."""
  labels: jax.Array         # (A,) int32: 1 sampled positive, 0 otherwise
  label_weights: jax.Array  # (A,) float32: 1 for sampled anchors
  box_targets: jax.Array    # (A, 4) float32 deltas of sampled positives, 0 elsewhere
  box_weights: jax.Array    # (A, 4) float32: 1 for sampled positives
  num_pos: jax.Array        # () int32
  num_neg: jax.Array        # () int32


def rpn_targets(key: jax.Array, anchors: jax.Array, anchor_valid: jax.Array,
                gt_boxes: jax.Array, gt_valid: jax.Array, *, assigner: MaxIoUAssigner,
                sampler: RandomSampler, coder: boxes_lib.BoxCoder,
                ignore_boxes: Optional[jax.Array] = None,
                ignore_valid: Optional[jax.Array] = None) -> RPNTargets:
  """mmdet v1 anchor_target_single (sampling=True) / torchvision RPN targets, for one image.

  anchors (A, 4) of all levels; anchor_valid (A,) the anchors training may use
  (`anchors.inside_image` with the convention's allowed border). Anchors are assigned
  (class-agnostic), `sampler.num` of them sampled; targets are the coder's deltas to the matched
  gt. The loss normalisation is in `losses.rpn_loss`.
  """
  assignment = assigner.assign(anchors, anchor_valid, gt_boxes, gt_valid, ignore_boxes,
                               ignore_valid)
  sample = sampler.sample(key, assignment.positive, assignment.negative)
  count = anchors.shape[0]
  sampled = _scatter_flags(count, sample.indices, sample.valid)
  sampled_pos = _scatter_flags(count, sample.indices, sample.valid & sample.positive)
  box_targets = _positive_deltas(coder, anchors, gt_boxes[assignment.gt_index], sampled_pos)
  return RPNTargets(labels=sampled_pos.astype(jnp.int32),
                    label_weights=sampled.astype(jnp.float32), box_targets=box_targets,
                    box_weights=jnp.broadcast_to(sampled_pos[:, None], (count, 4)).astype(
                        jnp.float32),
                    num_pos=sample.num_pos, num_neg=sample.num_neg)


def _scatter_flags(count: int, indices: jax.Array, flags: jax.Array) -> jax.Array:
  """(count,) bool, True at indices[i] where flags[i]."""
  return jnp.zeros((count,), bool).at[jnp.where(flags, indices, count)].set(True, mode="drop")


def _positive_deltas(coder: boxes_lib.BoxCoder, boxes: jax.Array, matched_gt: jax.Array,
                     positive: jax.Array) -> jax.Array:
  """Deltas of the positives, exactly 0 elsewhere (non-positives are encoded against themselves
  first, so a padded gt never puts inf or NaN into a masked-out entry)."""
  safe_gt = jnp.where(positive[:, None], matched_gt, boxes)
  return jnp.where(positive[:, None], coder.encode(boxes, safe_gt), 0.0)


class RCNNTargets(NamedTuple):
  """The sampled RoIs of one R-CNN stage and their targets (positives first)."""
  rois: jax.Array           # (S, 4) sampled boxes (proposals or gt)
  valid: jax.Array          # (S,) bool: filled slot
  labels: jax.Array         # (S,) int32: class (shifted by the background index) or background
  label_weights: jax.Array  # (S,) float32: 1 for filled slots
  box_targets: jax.Array    # (S, 4) deltas of positives, 0 elsewhere
  box_weights: jax.Array    # (S, 4) 1 for positives
  matched_gt: jax.Array     # (S,) int32 matched gt of positives (for mask targets), 0 elsewhere
  is_gt: jax.Array          # (S,) bool: the RoI is a ground-truth box added as a proposal
  num_pos: jax.Array        # () int32
  num_neg: jax.Array        # () int32


def _candidates(proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array,
                gt_valid: jax.Array, assign: Callable, gt_proposals: str):
  """(candidate boxes (P + M, 4), their `Assignment`, whether each is a gt box) of proposals and
  gt boxes in `gt_proposals`' order and assignment (`rcnn_targets`)."""
  from_proposals = assign(proposals, proposal_valid)
  gt_in = gt_valid & (gt_proposals != "none")
  if gt_proposals == "mmdet_v1":
    gt_index = jnp.arange(gt_boxes.shape[0], dtype=jnp.int32)
    from_gt = Assignment(gt_index, gt_in, jnp.zeros_like(gt_in), jnp.where(gt_in, 1.0, -1.0))
  else:
    from_gt = assign(gt_boxes, gt_in)
  parts = [(gt_boxes, from_gt, True), (proposals, from_proposals, False)]
  if gt_proposals != "mmdet_v1":
    parts.reverse()
  candidates = jnp.concatenate([p[0] for p in parts]).astype(jnp.float32)
  assignment = Assignment(*(jnp.concatenate(f) for f in zip(*(p[1] for p in parts))))
  from_gt_flag = jnp.concatenate([jnp.full(p[0].shape[:1], p[2]) for p in parts])
  return candidates, assignment, from_gt_flag


def rcnn_targets(key: jax.Array, proposals: jax.Array, proposal_valid: jax.Array,
                 gt_boxes: jax.Array, gt_labels: jax.Array, gt_valid: jax.Array, *,
                 assigner: MaxIoUAssigner, sampler: RandomSampler, coder: boxes_lib.BoxCoder,
                 gt_proposals: str = "mmdet_v1", background_index: int = 0,
                 ignore_boxes: Optional[jax.Array] = None,
                 ignore_valid: Optional[jax.Array] = None) -> RCNNTargets:
  """Sampled RoIs and targets of one R-CNN stage for one image (mmdet v1 assign_and_sample +
  bbox_target_single; torchvision RoIHeads.select_training_samples).

  proposals (P, 4) with proposal_valid (P,). gt_proposals adds the valid gt boxes as proposals:
  "mmdet_v1" puts them first, each assigned to itself (add_gt_as_proposals=True,
  AssignResult.add_gt_); "torchvision" appends them and matches them by IoU like any proposal
  (add_gt_proposals); "none" adds nothing (P + M candidates either way, the unused ones
  invalid). Labels: background_index 0 (both references) gives gt_label + 1 for positives and 0
  for negatives; any other background_index (e.g. K) keeps gt_label and uses it for negatives.
  Label weights are 1 on every sampled RoI (pos_weight = -1); box targets are class-agnostic
  deltas (`losses.rcnn_loss` picks the class-specific prediction). No gradient flows into the
  RoIs or targets (mmdet v1 detaches proposals, and Cascade R-CNN refines them under no_grad).
  """
  proposals = jax.lax.stop_gradient(proposals)
  if gt_proposals not in GT_PROPOSALS:
    raise ValueError(f"unknown gt_proposals {gt_proposals!r}; choose one of {GT_PROPOSALS}.")
  assign = lambda b, v: assigner.assign(b, v, gt_boxes, gt_valid, ignore_boxes, ignore_valid)
  candidates, assignment, from_gt_flag = _candidates(proposals, proposal_valid, gt_boxes,
                                                     gt_valid, assign, gt_proposals)
  sample = sampler.sample(key, assignment.positive, assignment.negative)
  rois = candidates[sample.indices]
  positive = sample.valid & sample.positive
  matched = jnp.where(positive, assignment.gt_index[sample.indices], 0)
  foreground = gt_labels[matched].astype(jnp.int32) + (1 if background_index == 0 else 0)
  labels = jnp.where(positive, foreground, background_index)
  box_targets = _positive_deltas(coder, rois, gt_boxes[matched], positive)
  return RCNNTargets(
      rois=rois, valid=sample.valid, labels=labels,
      label_weights=sample.valid.astype(jnp.float32), box_targets=box_targets,
      box_weights=jnp.broadcast_to(positive[:, None], box_targets.shape).astype(jnp.float32),
      matched_gt=matched, is_gt=sample.valid & from_gt_flag[sample.indices],
      num_pos=sample.num_pos, num_neg=sample.num_neg)
