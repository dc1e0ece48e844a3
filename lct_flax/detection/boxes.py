"""Box arithmetic for detection: areas, IoU / IoF, clipping, the delta coder, greedy NMS.

Boxes are float32 (x1, y1, x2, y2) in input-image pixels. `offset` is the pixel convention of
`Convention.box_offset`: 1.0 for mmdetection v1.0's "+1" (a box spans x2 - x1 + 1 pixels;
mmdet/core/bbox/geometry.py, transforms.py, ops/nms), 0.0 for torchvision's continuous boxes
(torchvision/ops/boxes.py, models/detection/_utils.py). Everything is jit-able with static
shapes; sets of boxes carry a boolean validity mask instead of a variable length. `nms` and
`batched_nms` work on the boxes of one image (use `jax.vmap` for a batch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

GROUP_NMS = ("exact", "coordinate_trick")


def box_area(boxes: jax.Array, offset: float = 0.0) -> jax.Array:
  """(..., 4) -> (...): (x2 - x1 + offset) * (y2 - y1 + offset), unclamped as in both
  references."""
  return (boxes[..., 2] - boxes[..., 0] + offset) * (boxes[..., 3] - boxes[..., 1] + offset)


def pairwise_intersection(a: jax.Array, b: jax.Array, offset: float = 0.0) -> jax.Array:
  """(N, 4), (M, 4) -> (N, M) intersection areas, widths clamped at 0."""
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt + offset, 0.0)
  return wh[..., 0] * wh[..., 1]


def pairwise_iou(a: jax.Array, b: jax.Array, offset: float = 0.0) -> jax.Array:
  """(N, 4), (M, 4) -> (N, M) intersection over union (mmdet bbox_overlaps mode 'iou';
  torchvision box_iou). Degenerate pairs (zero union) give NaN, as in the references: callers
  mask padding before reducing."""
  inter = pairwise_intersection(a, b, offset)
  union = box_area(a, offset)[:, None] + box_area(b, offset)[None, :] - inter
  return inter / union


def pairwise_iof(a: jax.Array, b: jax.Array, offset: float = 0.0) -> jax.Array:
  """(N, 4), (M, 4) -> (N, M) intersection over the area of the boxes of `a` (mmdet
  bbox_overlaps mode 'iof', "intersection over foreground"), used for ignore regions."""
  return pairwise_intersection(a, b, offset) / box_area(a, offset)[:, None]


def clip_boxes(boxes: jax.Array, image_shape: jax.Array, offset: float = 0.0) -> jax.Array:
  """Clamps x to [0, W - offset] and y to [0, H - offset]; image_shape is (h, w) (broadcast
  against the leading axes of `boxes`). mmdet v1 clips to W - 1 (delta2bbox max_shape),
  torchvision to W (clip_boxes_to_image)."""
  image_shape = jnp.asarray(image_shape, boxes.dtype)
  limit_x = image_shape[..., 1, None] - offset
  limit_y = image_shape[..., 0, None] - offset
  x = jnp.clip(boxes[..., 0::2], 0.0, limit_x)
  y = jnp.clip(boxes[..., 1::2], 0.0, limit_y)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def min_size_mask(boxes: jax.Array, min_size: float, offset: float = 0.0) -> jax.Array:
  """(..., 4) -> (...) bool: both sides (x2 - x1 + offset, y2 - y1 + offset) >= min_size.
  min_size <= 0 keeps every box (mmdet v1's min_bbox_size = 0 skips the filter)."""
  if min_size <= 0:
    return jnp.ones(boxes.shape[:-1], bool)
  widths = boxes[..., 2] - boxes[..., 0] + offset
  heights = boxes[..., 3] - boxes[..., 1] + offset
  return (widths >= min_size) & (heights >= min_size)


def _centres_and_sizes(boxes: jax.Array, offset: float):
  """Centres and sizes in each reference's order of operations: mmdet v1 (offset 1) takes the
  centre as (x1 + x2) / 2 (bbox2delta), torchvision as x1 + w / 2 (encode_boxes)."""
  widths = boxes[..., 2] - boxes[..., 0] + offset
  heights = boxes[..., 3] - boxes[..., 1] + offset
  if offset:
    cx = (boxes[..., 0] + boxes[..., 2]) * 0.5
    cy = (boxes[..., 1] + boxes[..., 3]) * 0.5
  else:
    cx = boxes[..., 0] + 0.5 * widths
    cy = boxes[..., 1] + 0.5 * heights
  return cx, cy, widths, heights


@dataclasses.dataclass(frozen=True)
class BoxCoder:
  """The (dx, dy, dw, dh) box parametrisation of R-CNN, normalised by `means` and `stds`.

  encode: dx = (gx - px) / pw, dw = log(gw / pw), then (d - mean) / std (mmdet v1 bbox2delta;
  torchvision's BoxCoder weights are 1 / std). decode: d * std + mean, dw and dh clamped at
  `max_log_ratio` = log(1000 / 16) from above, and from below too when `clamp_below` (mmdet v1
  delta2bbox; torchvision clamps from above only), then x1 = gx - gw / 2 + offset / 2 and
  x2 = gx + gw / 2 - offset / 2. Sizes include `offset` (mmdet v1's +1). Build it with
  `Convention.box_coder(stds)`.
  """
  means: tuple = (0.0, 0.0, 0.0, 0.0)
  stds: tuple = (1.0, 1.0, 1.0, 1.0)
  offset: float = 0.0
  max_log_ratio: float = math.log(1000.0 / 16.0)
  clamp_below: bool = False

  def encode(self, boxes: jax.Array, targets: jax.Array) -> jax.Array:
    """Deltas (..., 4) that take `boxes` (..., 4) to `targets` (..., 4)."""
    px, py, pw, ph = _centres_and_sizes(boxes.astype(jnp.float32), self.offset)
    gx, gy, gw, gh = _centres_and_sizes(targets.astype(jnp.float32), self.offset)
    deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], -1)
    return (deltas - jnp.asarray(self.means, jnp.float32)) / jnp.asarray(self.stds, jnp.float32)

  def decode(self, boxes: jax.Array, deltas: jax.Array) -> jax.Array:
    """Boxes (..., 4) from `deltas` (..., 4) applied to `boxes` (broadcastable against the
    deltas, e.g. (R, 1, 4) against class-specific (R, K, 4)). Not clipped: see `clip_boxes`."""
    d = (deltas.astype(jnp.float32) * jnp.asarray(self.stds, jnp.float32)
         + jnp.asarray(self.means, jnp.float32))
    low = -self.max_log_ratio if self.clamp_below else None
    dw = jnp.clip(d[..., 2], low, self.max_log_ratio)
    dh = jnp.clip(d[..., 3], low, self.max_log_ratio)
    px, py, pw, ph = _centres_and_sizes(boxes.astype(jnp.float32), self.offset)
    gx = px + pw * d[..., 0]
    gy = py + ph * d[..., 1]
    half_w = 0.5 * (pw * jnp.exp(dw))
    half_h = 0.5 * (ph * jnp.exp(dh))
    inset = 0.5 * self.offset
    return jnp.stack([gx - half_w + inset, gy - half_h + inset,
                      gx + half_w - inset, gy + half_h - inset], axis=-1)


def nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: float,
        max_output: int, *, offset: float = 0.0,
        groups: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Greedy non-maximum suppression of one image's boxes, with static shapes.

  Boxes are visited in decreasing score (ties: the lower index first, a stable sort); a box is
  kept unless a kept box of higher rank (and the same group, when `groups` is given) overlaps
  it with IoU > iou_threshold, as torchvision.ops.nms and mmdet v1's CUDA NMS do (the strict
  ">"; mmdet's CPU kernel used ">="). Invalid boxes are neither kept nor suppress others.
  Stops once `max_output` boxes are kept or the valid boxes are all visited (each visit costs
  O(N), so a large padded N with few valid boxes stays cheap).

  boxes (N, 4), scores (N,), valid (N,) bool, groups (N,) int or None. Returns (indices, valid):
  (max_output,) int32 indices into `boxes` of the kept boxes in decreasing score, and a mask of
  the filled slots (unfilled slots hold index 0).
  """
  boxes, scores, valid = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid)
  n = boxes.shape[0]
  order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True).astype(jnp.int32)
  sorted_boxes = boxes[order].astype(jnp.float32)
  sorted_groups = None if groups is None else jnp.asarray(groups)[order]
  areas = box_area(sorted_boxes, offset)
  x1, y1, x2, y2 = (sorted_boxes[:, k] for k in range(4))
  rank = jnp.arange(n, dtype=jnp.int32)
  num_valid = jnp.sum(valid, dtype=jnp.int32)   # the valid boxes come first in `order`

  def cond(state):
    i, _, kept = state
    return (i < num_valid) & (kept < max_output)

  def body(state):
    i, suppressed, kept = state
    w = jnp.maximum(jnp.minimum(x2[i], x2) - jnp.maximum(x1[i], x1) + offset, 0.0)
    h = jnp.maximum(jnp.minimum(y2[i], y2) - jnp.maximum(y1[i], y1) + offset, 0.0)
    inter = w * h
    overlapping = (inter / (areas[i] + areas - inter) > iou_threshold) & (rank > i)
    if sorted_groups is not None:
      overlapping &= sorted_groups == sorted_groups[i]
    keep_i = ~suppressed[i]
    return i + 1, suppressed | (overlapping & keep_i), kept + keep_i.astype(jnp.int32)

  visited, suppressed, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(0), ~valid[order], jnp.int32(0)))
  keep = ~suppressed & (rank < visited)
  slot = jnp.cumsum(keep, dtype=jnp.int32) - 1
  slot = jnp.where(keep & (slot < max_output), slot, max_output)
  indices = jnp.zeros((max_output,), jnp.int32).at[slot].set(order, mode="drop")
  count = jnp.minimum(jnp.sum(keep, dtype=jnp.int32), max_output)
  return indices, jnp.arange(max_output) < count


def offset_by_group(boxes: jax.Array, groups: jax.Array, valid: jax.Array) -> jax.Array:
  """torchvision's _batched_nms_coordinate_trick (ops/boxes.py): every box shifted by
  group x (the largest coordinate of the valid boxes + 1), in float32, so that boxes of
  different groups cannot overlap and one NMS serves all groups. The shift rounds each
  coordinate to the float32 spacing at the offset (0.004 px at 37,000: class 90 on a 416 px
  image), which moves IoUs near the threshold by about 1e-4."""
  top = jnp.max(jnp.where(valid[:, None], boxes, -jnp.inf))
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  return boxes + (groups.astype(boxes.dtype) * (top + 1.0))[:, None]


def batched_nms(boxes: jax.Array, scores: jax.Array, groups: jax.Array, valid: jax.Array,
                iou_threshold: float, max_output: int, *, offset: float = 0.0,
                group_nms: str = "exact") -> tuple[jax.Array, jax.Array]:
  """NMS applied independently within each group (class, or FPN level), merged in decreasing
  score: torchvision.ops.batched_nms and mmdet v1's per-class loop in multiclass_nms. Same
  return as `nms`.

  `group_nms` (`Convention.group_nms`): "exact" masks IoUs across groups (mmdet v1's loop,
  torchvision's _batched_nms_vanilla); "coordinate_trick" runs one NMS on `offset_by_group`'s
  shifted boxes, as torchvision does on CUDA for up to 25,000 boxes and on the CPU for up to
  1,000 (`groups` must then be torchvision's group ids: its levels 0..4, its class labels).
  """
  if group_nms == "coordinate_trick":
    return nms(offset_by_group(boxes, groups, valid), scores, valid, iou_threshold, max_output,
               offset=offset)
  if group_nms != "exact":
    raise ValueError(f"unknown group_nms {group_nms!r}; choose one of {GROUP_NMS}.")
  return nms(boxes, scores, valid, iou_threshold, max_output, offset=offset, groups=groups)
