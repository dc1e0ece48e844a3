"""RPN anchors per FPN level, in the order an NHWC RPN head's outputs flatten to.

A level of stride s with A = len(ratios) * len(scales) anchors per position yields
(H * W * A, 4) anchors ordered (y, x, anchor), anchor index = ratio * len(scales) + scale:
an (N, H, W, A) objectness map reshaped to (N, H * W * A) lines up with them, and (N, H, W, 4A)
deltas reshaped to (N, H * W * A, 4). Ratios are h / w. The base anchor of a level has the area
of a (scale * s)^2 square: one scale 8 over strides 4..64 is mmdet v1's anchor_scales=[8] and
torchvision's sizes 32..512.

Anchors depend only on static shapes, so they are NumPy float32 constants computed at trace
time; `inside_image` depends on each image's size and is JAX.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

GEOMETRIES = ("mmdet_v1", "torchvision")
FPN_STRIDES = (4, 8, 16, 32, 64)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
SCALES = (8.0,)


def base_anchors(stride: int, ratios: Sequence[float] = ASPECT_RATIOS,
                 scales: Sequence[float] = SCALES, geometry: str = "mmdet_v1") -> np.ndarray:
  """(A, 4) float32 anchors of the position at the origin, in float32 arithmetic as the
  references compute them.

  "mmdet_v1" (mmdet/core/anchor/anchor_generator.py gen_base_anchors, base_size = stride):
  centre (s - 1) / 2, corners round(c -/+ (w - 1) / 2) with w = s * scale / sqrt(ratio).
  "torchvision" (models/detection/anchor_utils.py generate_anchors, size = scale * s):
  corners round(-/+ w / 2). Rounding is half to even in both (torch.round).
  """
  h_ratios = np.sqrt(np.asarray(ratios, np.float32))
  w_ratios = np.float32(1.0) / h_ratios
  scales = np.asarray(scales, np.float32)
  if geometry == "mmdet_v1":
    base = np.float32(stride)
    ws = (base * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (base * h_ratios[:, None] * scales[None, :]).reshape(-1)
    centre = np.float32(0.5) * (base - np.float32(1.0))
    half_w = np.float32(0.5) * (ws - np.float32(1.0))
    half_h = np.float32(0.5) * (hs - np.float32(1.0))
    anchors = np.stack([centre - half_w, centre - half_h, centre + half_w, centre + half_h], -1)
  elif geometry == "torchvision":
    sizes = scales * np.float32(stride)
    ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
    anchors = np.stack([-ws, -hs, ws, hs], -1) / np.float32(2.0)
  else:
    raise ValueError(f"unknown anchor geometry {geometry!r}; choose one of {GEOMETRIES}.")
  return np.round(anchors).astype(np.float32)


def grid_anchors(base: np.ndarray, feature_shape: Sequence[int],
                 stride_yx: Sequence[int]) -> np.ndarray:
  """(H * W * A, 4) anchors: `base` (A, 4) shifted to every position (y * stride_y,
  x * stride_x) of an (H, W) feature map, ordered (y, x, anchor)."""
  height, width = feature_shape
  shift_x = np.arange(width, dtype=np.float32) * np.float32(stride_yx[1])
  shift_y = np.arange(height, dtype=np.float32) * np.float32(stride_yx[0])
  yy, xx = np.meshgrid(shift_y, shift_x, indexing="ij")
  shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None]).reshape(-1, 4).astype(np.float32)


def feature_shapes(canvas_shape: Sequence[int],
                   strides: Sequence[int] = FPN_STRIDES) -> list[tuple[int, int]]:
  """(ceil(H / s), ceil(W / s)) per stride: the FPN map sizes of a ResNet on an (H, W) canvas
  (every stride-2 layer of the ResNet, and the stride-2 max-pool that makes P6 in both
  references, maps n to ceil(n / 2))."""
  return [(-(-canvas_shape[0] // s), -(-canvas_shape[1] // s)) for s in strides]


def level_anchors(canvas_shape: Sequence[int], strides: Sequence[int] = FPN_STRIDES,
                  ratios: Sequence[float] = ASPECT_RATIOS, scales: Sequence[float] = SCALES,
                  geometry: str = "mmdet_v1",
                  shapes: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
  """Anchors of every level for an (H, W) canvas: a list of (H_l * W_l * A, 4) float32 arrays.

  `shapes` are the feature map sizes (default `feature_shapes(canvas_shape, strides)`). mmdet v1
  steps anchors by the nominal stride (anchor_head.py get_anchors); torchvision by
  canvas size // feature size per axis (anchor_utils.py AnchorGenerator.forward), which is not
  the nominal stride when the canvas is not a multiple of it (e.g. 61 for P6 of 800 rows).
  """
  shapes = feature_shapes(canvas_shape, strides) if shapes is None else shapes
  anchors = []
  for stride, shape in zip(strides, shapes):
    if geometry == "torchvision":
      step = (canvas_shape[0] // shape[0], canvas_shape[1] // shape[1])
    else:
      step = (stride, stride)
    anchors.append(grid_anchors(base_anchors(stride, ratios, scales, geometry), shape, step))
  return anchors


def inside_image(anchors: jax.Array, image_shape: jax.Array,
                 allowed_border: float) -> jax.Array:
  """(A, 4), (2,) (h, w) -> (A,) bool: the anchors RPN training may use.

  mmdet v1's anchor_inside_flags (core/anchor/anchor_target.py): with allowed_border >= 0, an
  anchor counts only if x1 >= -b, y1 >= -b, x2 < w + b and y2 < h + b (the paper's configs:
  b = 0); allowed_border < 0 (torchvision) keeps every anchor. (mmdet's valid_flags for the
  positions beyond the padded image add nothing when allowed_border >= 0: such anchors end
  beyond the image.)
  """
  if allowed_border < 0:
    return jnp.ones(anchors.shape[:1], bool)
  image_shape = jnp.asarray(image_shape, jnp.float32)
  b = allowed_border
  return ((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b)
          & (anchors[:, 2] < image_shape[1] + b) & (anchors[:, 3] < image_shape[0] + b))
