"""Post-processing with static shapes: RPN proposals and the final per-class NMS, one image each
(`jax.vmap` over a batch).

RPN (mmdet v1 rpn_head.py get_bboxes_single; torchvision rpn.py filter_proposals): per level,
the top `nms_pre` anchors by objectness are decoded and clipped, boxes smaller than the minimum
size dropped, NMS applied within the level and its best `nms_post` kept; the best `max_num` of
all levels are the proposals (nms_across_levels=False in the paper's configs; torchvision's
batched_nms over levels is the same). Detections (mmdet v1 multiclass_nms; torchvision
postprocess_detections): every (box, class) pair scoring above the threshold is a candidate,
NMS runs per class, the best `max_output` are kept.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from lct_flax.detection import boxes as boxes_lib
from lct_flax.detection.ranking import ranked


def rpn_proposals(logits: Sequence[jax.Array], deltas: Sequence[jax.Array],
                  anchors: Sequence[jax.Array], image_shape: jax.Array, *,
                  coder: boxes_lib.BoxCoder, nms_pre: int, nms_post: int, max_num: int,
                  iou_threshold: float = 0.7, min_size: float = 0.0,
                  group_nms: str = "exact") -> tuple[jax.Array, jax.Array, jax.Array]:
  """Proposals of one image from per-level objectness logits (A_l,), deltas (A_l, 4) and anchors
  (A_l, 4); image_shape (h, w) of the resized image (boxes are clipped to it).

  mmdet v1 (faster_rcnn_r101_fpn_1x.py): train nms_pre = nms_post = max_num = 2000, test 1000,
  min_size 0; torchvision: pre_nms_top_n 2000/1000 per level, nms_post = the per-level count
  (no per-level cut), post_nms_top_n = max_num 2000/1000, min_size 1e-3
  (`Convention.min_proposal_size`). Anchors are ranked by logit (the same order as the sigmoid
  score, without its float32 ties near 1). Returns boxes (max_num, 4), sigmoid scores (max_num,)
  and validity (max_num,), in decreasing score. No gradient flows through proposals (both
  references detach the RPN outputs here). `group_nms` (`Convention.group_nms`): how the levels
  are kept apart in NMS; "coordinate_trick" shifts each level's boxes by its index, 0..L-1, as
  torchvision's batched_nms over its levels does.
  """
  logits, deltas = jax.lax.stop_gradient((list(logits), list(deltas)))
  k = max(min(nms_pre, a.shape[0]) for a in anchors)
  level_boxes, level_scores, level_valid = [], [], []
  for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
    top_logits, top = ranked(level_logits.astype(jnp.float32), nms_pre)
    decoded = coder.decode(jnp.asarray(level_anchors)[top], level_deltas[top])
    decoded = boxes_lib.clip_boxes(decoded, image_shape, coder.offset)
    valid = boxes_lib.min_size_mask(decoded, min_size, coder.offset)
    pad = k - top.shape[0]
    level_boxes.append(jnp.pad(decoded, ((0, pad), (0, 0))))
    level_scores.append(jnp.pad(jax.nn.sigmoid(top_logits), (0, pad)))
    level_valid.append(jnp.pad(valid, (0, pad)))
  boxes, scores, valid = (jnp.stack(x) for x in (level_boxes, level_scores, level_valid))
  nms_boxes = boxes
  if group_nms == "coordinate_trick":
    levels = jnp.repeat(jnp.arange(len(anchors)), k)
    nms_boxes = boxes_lib.offset_by_group(boxes.reshape(-1, 4), levels,
                                          valid.reshape(-1)).reshape(boxes.shape)
  elif group_nms != "exact":
    raise ValueError(f"unknown group_nms {group_nms!r}; choose one of {boxes_lib.GROUP_NMS}.")
  per_level = min(nms_post, k)
  keep, kept = jax.vmap(lambda b, s, v: boxes_lib.nms(b, s, v, iou_threshold, per_level,
                                                      offset=coder.offset))(nms_boxes, scores,
                                                                            valid)
  boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1).reshape(-1, 4)
  scores = jnp.where(kept, jnp.take_along_axis(scores, keep, axis=1), -jnp.inf).reshape(-1)
  return _top(boxes, scores, max_num)


def _top(boxes: jax.Array, scores: jax.Array, count: int):
  """The `count` best of boxes (P, 4) by score (-inf: empty), padded when P < count."""
  best_scores, best = ranked(scores, count)
  pad = count - best.shape[0]
  valid = jnp.pad(best_scores > -jnp.inf, (0, pad))
  best_scores = jnp.where(valid, jnp.pad(best_scores, (0, pad)), 0.0)
  return jnp.pad(boxes[best], ((0, pad), (0, 0))), best_scores, valid


class Detections(NamedTuple):
  """Final detections of one image, in decreasing score; labels are 0..K-1 (foreground). A Mask
  R-CNN adds each detection's mask probabilities for its class (`TwoStageDetector.__call__`)."""
  boxes: jax.Array           # (max_output, 4)
  scores: jax.Array          # (max_output,)
  labels: jax.Array          # (max_output,) int32
  valid: jax.Array           # (max_output,) bool
  num_candidates: jax.Array  # () int32 pairs above the score threshold (exact if <= max_candidates)
  masks: Optional[jax.Array] = None   # (max_output, 28, 28) float32 in [0, 1], or None


def multiclass_nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array, *,
                   score_threshold: float, iou_threshold: float, max_output: int,
                   max_candidates: int, offset: float = 0.0, min_size: float = 0.0,
                   group_nms: str = "exact") -> Detections:
  """Per-class NMS of one image's R boxes: boxes (R, K, 4) class-specific or (R, 1, 4) shared,
  already decoded and clipped; scores (R, K) foreground probabilities (the background column
  removed); valid (R,).

  Candidates are the pairs with score > score_threshold (strict, both references) whose box
  sides are >= min_size (`Convention.min_detection_size`); the best `max_candidates` of them go
  through `batched_nms` by class (static shapes need that cap; the result equals the references'
  whenever num_candidates <= max_candidates). mmdet v1 and torchvision: score_threshold 0.05,
  iou_threshold 0.5, max_output 100. `group_nms`: see `boxes.batched_nms`; the groups are the
  classes' columns beside the background's, 1..K (torchvision's labels).
  """
  r, k = scores.shape
  boxes = jnp.broadcast_to(boxes, (r, k, 4)).reshape(-1, 4)
  candidate = ((scores > score_threshold) & valid[:, None]).reshape(-1)
  candidate &= boxes_lib.min_size_mask(boxes, min_size, offset)
  flat_scores = jnp.where(candidate, scores.reshape(-1).astype(jnp.float32), -jnp.inf)
  top_scores, top = ranked(flat_scores, max_candidates)
  labels = (top % k).astype(jnp.int32)
  keep, kept = boxes_lib.batched_nms(boxes[top], top_scores, labels + 1, top_scores > -jnp.inf,
                                     iou_threshold, max_output, offset=offset,
                                     group_nms=group_nms)
  return Detections(boxes=boxes[top][keep], scores=jnp.where(kept, top_scores[keep], 0.0),
                    labels=jnp.where(kept, labels[keep], 0), valid=kept,
                    num_candidates=jnp.sum(candidate, dtype=jnp.int32))
