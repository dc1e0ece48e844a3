"""RoIAlign (He et al., Mask R-CNN) on one feature map or over FPN levels, NHWC, static shapes.

Each RoI is split into output_size x output_size bins; each bin averages sampling_ratio^2
bilinear samples at the centres of a regular sub-grid (sampling_ratio fixed: 2 in both
references' detection heads). A sample outside [-1, H] x [-1, W] contributes 0; one in
[-1, 0) is clamped to 0; one at or beyond the last row/column reads that row/column. The RoI
geometry follows `mode` (`Convention.roi_align_mode`):

  "mmdet_v1": [x1 * scale, (x2 + 1) * scale), size clamped at 0
              (mmdet/ops/roi_align/src/roi_align_kernel.cu, v1.0);
  "legacy":   [x1 * scale, x2 * scale), size clamped at 1 (torchvision roi_align aligned=False,
              which MultiScaleRoIAlign and hence torchvision's detectors use);
  "aligned":  [x1 * scale - 0.5, x2 * scale - 0.5), unclamped (torchvision aligned=True).

The samples of every RoI are gathered from the flattened feature maps (all FPN levels
concatenated, each RoI reading only its own level through a per-RoI offset), so the cost is
R x output_size^2 x sampling_ratio^2 x 4 gathers of C channels whatever the number of levels;
RoIs are pooled `chunk` at a time to bound the memory those samples take (None: all at once).
Interpolation weights and sums are float32; the output has the features' dtype.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ROI_ALIGN_MODES = ("mmdet_v1", "legacy", "aligned")
LEVEL_MAPPINGS = ("mmdet_v1", "torchvision")
# RoIs pooled per step (`_pool`): on a CPU, 32 at a time is about twice as fast as all 512 of an
# image at once and holds 100 MB instead of 480 MB of samples (bench/detection_ops.py).
DEFAULT_CHUNK = 32


def roi_extent(boxes: jax.Array, scale: jax.Array, mode: str):
  """Start (y, x) and size (h, w) of each RoI on its feature map, per `mode`."""
  boxes = boxes.astype(jnp.float32)
  if mode == "mmdet_v1":
    start = boxes[:, :2] * scale
    size = jnp.maximum((boxes[:, 2:] + 1.0) * scale - start, 0.0)
  elif mode == "legacy":
    start = boxes[:, :2] * scale
    size = jnp.maximum(boxes[:, 2:] * scale - start, 1.0)
  elif mode == "aligned":
    start = boxes[:, :2] * scale - 0.5
    size = (boxes[:, 2:] * scale - 0.5) - start
  else:
    raise ValueError(f"unknown RoIAlign mode {mode!r}; choose one of {ROI_ALIGN_MODES}.")
  return start[:, ::-1], size[:, ::-1]


def sample_points(start: jax.Array, size: jax.Array, output_size: int,
                  sampling_ratio: int) -> jax.Array:
  """(R,), (R,) -> (R, output_size * sampling_ratio) sample coordinates along one axis, bin-major,
  as the kernels compute them: start + p * bin + (i + 0.5) * bin / sampling_ratio."""
  bin_size = (size / output_size)[:, None, None]
  p = jnp.arange(output_size, dtype=jnp.float32)[None, :, None]
  i = jnp.arange(sampling_ratio, dtype=jnp.float32)[None, None, :]
  points = start[:, None, None] + p * bin_size + (i + 0.5) * bin_size / sampling_ratio
  return points.reshape(start.shape[0], -1)


def axis_weights(coords: jax.Array, limit: jax.Array):
  """Bilinear neighbours and weights along one axis of length `limit` (R, 1) for coordinates
  (R, P): (low, high, weight_low, weight_high, inside)."""
  inside = (coords >= -1.0) & (coords <= limit.astype(jnp.float32))
  coords = jnp.maximum(coords, 0.0)
  low = jnp.floor(coords).astype(jnp.int32)
  at_edge = low >= limit - 1
  low = jnp.where(at_edge, limit - 1, low)
  high = jnp.where(at_edge, limit - 1, low + 1)
  coords = jnp.where(at_edge, low.astype(jnp.float32), coords)
  frac = coords - low
  return low, high, 1.0 - frac, frac, inside


def _pool(flat: jax.Array, base: jax.Array, height: jax.Array, width: jax.Array,
          start: jax.Array, size: jax.Array, output_size: int, sampling_ratio: int,
          chunk: Optional[int]) -> jax.Array:
  """RoIAlign of R RoIs from `flat` (P, C), where RoI r reads the (height[r], width[r]) map
  stored row-major at flat[base[r]:]; start/size (R, 2) in (y, x) map coordinates. RoIs are
  pooled `chunk` at a time (a sequential loop), which bounds the gathered samples held at once
  to chunk x (output_size * sampling_ratio)^2 x 4 x C values."""
  per_roi = (base, height, width, start, size)
  if chunk is None or chunk >= base.shape[0]:
    return _pool_rois(flat, *per_roi, output_size, sampling_ratio)
  pool_one = lambda roi: _pool_rois(flat, *(x[None] for x in roi), output_size,
                                    sampling_ratio)[0]
  return jax.lax.map(pool_one, per_roi, batch_size=chunk)


def _pool_rois(flat: jax.Array, base: jax.Array, height: jax.Array, width: jax.Array,
               start: jax.Array, size: jax.Array, output_size: int,
               sampling_ratio: int) -> jax.Array:
  """`_pool` of all the RoIs at once."""
  r = base.shape[0]
  ys = sample_points(start[:, 0], size[:, 0], output_size, sampling_ratio)
  xs = sample_points(start[:, 1], size[:, 1], output_size, sampling_ratio)
  y_low, y_high, wy_low, wy_high, y_in = axis_weights(ys, height[:, None])
  x_low, x_high, wx_low, wx_high, x_in = axis_weights(xs, width[:, None])
  inside = (y_in[:, :, None] & x_in[:, None, :]).astype(jnp.float32)
  row_low = base[:, None] + y_low * width[:, None]
  row_high = base[:, None] + y_high * width[:, None]
  total = 0.0
  for rows, wy in ((row_low, wy_low), (row_high, wy_high)):
    for cols, wx in ((x_low, wx_low), (x_high, wx_high)):
      index = rows[:, :, None] + cols[:, None, :]
      weight = wy[:, :, None] * wx[:, None, :] * inside
      total = total + weight[..., None] * flat[index].astype(jnp.float32)
  n = output_size
  total = total.reshape(r, n, sampling_ratio, n, sampling_ratio, flat.shape[-1])
  return (total.sum(axis=(2, 4)) / (sampling_ratio * sampling_ratio)).astype(flat.dtype)


def _check(output_size: int, sampling_ratio: int, chunk: Optional[int]):
  if sampling_ratio < 1:
    raise ValueError(f"RoIAlign sampling_ratio must be >= 1 (static shapes have no adaptive "
                     f"grid), got {sampling_ratio}; both references use 2.")
  if output_size < 1:
    raise ValueError(f"RoIAlign output_size must be >= 1, got {output_size}.")
  if chunk is not None and chunk < 1:
    raise ValueError(f"RoIAlign chunk must be >= 1 or None, got {chunk}.")


def roi_align(features: jax.Array, boxes: jax.Array, box_indices: jax.Array, *,
              spatial_scale: float, output_size: int = 7, sampling_ratio: int = 2,
              mode: str = "legacy", chunk: Optional[int] = DEFAULT_CHUNK) -> jax.Array:
  """RoIAlign on one level: features (B, H, W, C), boxes (R, 4) in input pixels, box_indices
  (R,) int selecting each RoI's map in B (torchvision's batch-index column). Returns
  (R, output_size, output_size, C). With B = instance masks (M, Hm, Wm, 1), box_indices =
  matched instances and spatial_scale = Hm / H, this also crops mask targets (issue 14)."""
  _check(output_size, sampling_ratio, chunk)
  b, h, w, c = features.shape
  start, size = roi_extent(boxes, jnp.float32(spatial_scale), mode)
  r = boxes.shape[0]
  base = box_indices.astype(jnp.int32) * (h * w)
  return _pool(features.reshape(b * h * w, c), base, jnp.full((r,), h, jnp.int32),
               jnp.full((r,), w, jnp.int32), start, size, output_size, sampling_ratio, chunk)


def map_roi_levels(boxes: jax.Array, strides: Sequence[int], mapping: str) -> jax.Array:
  """(..., 4) -> (...) int32 index into `strides` of the FPN level each RoI pools from.

  "mmdet_v1" (mmdet/models/roi_extractors/single_level.py map_roi_levels, finest_scale 56):
  floor(log2(sqrt((w + 1)(h + 1)) / 56 + 1e-6)); "torchvision" (ops/poolers.py LevelMapper,
  canonical scale 224 at level 4): floor(4 + log2(sqrt(w h) / 224) + 1e-6) - log2(strides[0]).
  Both clamped to the available levels.
  """
  boxes = boxes.astype(jnp.float32)
  num_levels = len(strides)
  if mapping == "mmdet_v1":
    scale = jnp.sqrt((boxes[..., 2] - boxes[..., 0] + 1.0) * (boxes[..., 3] - boxes[..., 1] + 1.0))
    levels = jnp.floor(jnp.log2(scale / 56.0 + 1e-6))
  elif mapping == "torchvision":
    scale = jnp.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
    levels = jnp.floor(4.0 + jnp.log2(scale / 224.0) + jnp.float32(1e-6)) - np.log2(strides[0])
  else:
    raise ValueError(f"unknown RoI level mapping {mapping!r}; choose one of {LEVEL_MAPPINGS}.")
  return jnp.clip(levels, 0, num_levels - 1).astype(jnp.int32)


def multilevel_roi_align(features: Sequence[jax.Array], boxes: jax.Array, *,
                         strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 2,
                         mode: str = "legacy", level_mapping: str = "torchvision",
                         chunk: Optional[int] = DEFAULT_CHUNK) -> jax.Array:
  """Multi-scale RoIAlign over FPN levels (mmdet v1 SingleRoIExtractor, torchvision
  MultiScaleRoIAlign): features[l] (N, H_l, W_l, C) of stride strides[l] (P2-P5: 4..32),
  boxes (N, R, 4) per image. Each RoI pools from the level `map_roi_levels` gives it, at
  spatial scale 1 / stride. Returns (N, R, output_size, output_size, C).

  Each image's RoIs read only that image's maps (`jax.vmap` over the batch), so a batch sharded
  over devices pools on each device only the RoIs of its own images."""
  _check(output_size, sampling_ratio, chunk)
  if len(features) != len(strides):
    raise ValueError(f"{len(features)} feature maps but {len(strides)} strides.")
  n = boxes.shape[0]
  c = features[0].shape[-1]
  sizes = [f.shape[1] * f.shape[2] for f in features]
  flat = jnp.concatenate([f.reshape(n, -1, c) for f in features], axis=1)
  levels = map_roi_levels(boxes, strides, level_mapping)
  level_base = jnp.asarray(np.cumsum([0] + sizes[:-1]), jnp.int32)[levels]
  heights = jnp.asarray([f.shape[1] for f in features], jnp.int32)[levels]
  widths = jnp.asarray([f.shape[2] for f in features], jnp.int32)[levels]
  scales = jnp.asarray([1.0 / s for s in strides], jnp.float32)[levels]
  start, size = jax.vmap(roi_extent, in_axes=(0, 0, None))(boxes, scales[..., None], mode)
  pool_image = lambda *image: _pool(*image, output_size, sampling_ratio, chunk)
  return jax.vmap(pool_image)(flat, level_base, heights, widths, start, size)
