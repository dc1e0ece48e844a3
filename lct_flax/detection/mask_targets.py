"""Instance masks on the device: Mask R-CNN's mask targets read from bit-packed instance masks.

The input pipeline carries each image's instance masks at full resolution on its canvas, packed
eight pixels to a byte along the width (`segmentation.canvas_masks`: uint8 (M, Hc, Wc / 8),
np.packbits' order, the first pixel in the high bit), so a batch costs Hc x Wc / 8 bytes per
instance slot and the targets are exactly those of full-resolution masks. `mask_targets` samples
them at the positive RoIs of one image (`jax.vmap` it over a batch) in either reference's way
(`Convention.mask_target`); only the sampled bits are ever read, never a whole unpacked mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lct_flax.detection import roi_align

MASK_TARGETS = ("mmdet_v1", "torchvision")
# torchvision's roi_align default (sampling_ratio=-1) takes ceil(RoI side / 28) samples per bin;
# static shapes fix the grid at 2 x 2 per bin, as its feature RoIAlign has.
TORCHVISION_SAMPLING_RATIO = 2


def read_bits(masks: jax.Array, instance: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
  """float32 0/1 pixels (y, x) of instances `instance` of packed masks (M, H, W / 8); the index
  arrays broadcast against each other."""
  byte = masks[instance, y, x >> 3]
  shift = (7 - (x & 7)).astype(jnp.uint8)
  return ((byte >> shift) & 1).astype(jnp.float32)


def _bilinear(masks: jax.Array, instance: jax.Array, rows, cols) -> jax.Array:
  """Bilinear samples (R, P, Q) of each RoI's instance at the grid of per-axis neighbours and
  weights `rows` = (low, high, weight_low, weight_high) (R, P) and `cols` (R, Q)."""
  y_low, y_high, wy_low, wy_high = rows
  x_low, x_high, wx_low, wx_high = cols
  instance = instance[:, None, None]
  total = 0.0
  for ys, wy in ((y_low, wy_low), (y_high, wy_high)):
    for xs, wx in ((x_low, wx_low), (x_high, wx_high)):
      pixels = read_bits(masks, instance, ys[:, :, None], xs[:, None, :])
      total = total + wy[:, :, None] * wx[:, None, :] * pixels
  return total


def _crop_and_resize(masks: jax.Array, rois: jax.Array, instance: jax.Array,
                     size: int) -> jax.Array:
  """mmdet v1 mask_target_single: the RoI clipped to the mask and truncated to integers, the
  crop mask[y1:y2 + 1, x1:x2 + 1] resized to size x size by cv2's INTER_LINEAR (one sample per
  output pixel at the half-pixel position (i + 0.5) * side / size - 0.5, clamped to the crop),
  rounded half up to 0/1 as cv2 rounds its uint8 result (cv2 weighs with 11-bit fixed-point
  numbers, which may decide values within 2^-11 of 0.5 the other way)."""
  height, width = masks.shape[1], masks.shape[2] * 8
  limit = jnp.asarray([width - 1, height - 1] * 2, jnp.float32)
  box = jnp.floor(jnp.clip(rois.astype(jnp.float32), 0.0, limit)).astype(jnp.int32)
  axes = []
  for start, end in ((box[:, 1], box[:, 3]), (box[:, 0], box[:, 2])):   # y, then x
    side = jnp.maximum(end - start + 1, 1)[:, None]
    # The position (i + 0.5) * side / size - 0.5 as whole part and fraction, from integers:
    # exact where it is a half (XLA may turn a float division into a reciprocal product).
    twice = (2 * jnp.arange(size, dtype=jnp.int32) + 1)[None, :] * side - size
    whole = jnp.floor_divide(twice, 2 * size)
    fraction = (twice - whole * 2 * size).astype(jnp.float32) / (2 * size)
    positions = whole.astype(jnp.float32) + fraction
    low, high, w_low, w_high, _ = roi_align.axis_weights(positions, side)
    axes.append((low + start[:, None], high + start[:, None], w_low, w_high))
  return (_bilinear(masks, instance, *axes) >= 0.5).astype(jnp.float32)


def _roi_align(masks: jax.Array, rois: jax.Array, instance: jax.Array, image_shape: jax.Array,
               size: int) -> jax.Array:
  """torchvision project_masks_on_boxes: roi_align(mask, box, size, spatial_scale=1,
  aligned=False) of the mask as large as the image (samples beyond it read 0 or the edge, as
  torchvision's unpadded masks do), `TORCHVISION_SAMPLING_RATIO` samples per bin and axis."""
  ratio = TORCHVISION_SAMPLING_RATIO
  start, extent = roi_align.roi_extent(rois, jnp.float32(1.0), "legacy")
  axes, inside = [], []
  for axis in range(2):
    points = roi_align.sample_points(start[:, axis], extent[:, axis], size, ratio)
    limit = jnp.broadcast_to(image_shape[axis], (rois.shape[0], 1))
    low, high, w_low, w_high, within = roi_align.axis_weights(points, limit)
    axes.append((low, high, w_low, w_high))
    inside.append(within.astype(jnp.float32))
  samples = _bilinear(masks, instance, *axes) * inside[0][:, :, None] * inside[1][:, None, :]
  samples = samples.reshape(rois.shape[0], size, ratio, size, ratio)
  return samples.mean(axis=(2, 4))


def mask_targets(masks: jax.Array, rois: jax.Array, instance: jax.Array,
                 image_shape: jax.Array, *, size: int = 28,
                 mode: str = "mmdet_v1") -> jax.Array:
  """Mask R-CNN's targets of one image: packed instance masks (M, Hc, Wc / 8), RoIs (R, 4) in
  canvas pixels, `instance` (R,) the instance each RoI is matched to, image_shape (h, w) of the
  image on the canvas -> float32 (R, size, size) in [0, 1] (`Convention.mask_target`: "mmdet_v1"
  0/1, "torchvision" soft). Rows of RoIs that are not positives are computed and ignored by the
  loss's weights. No gradient flows into them (the masks are data)."""
  rois = jax.lax.stop_gradient(rois)
  instance = instance.astype(jnp.int32)
  if mode == "mmdet_v1":
    return _crop_and_resize(masks, rois, instance, size)
  if mode == "torchvision":
    return _roi_align(masks, rois, instance, jnp.asarray(image_shape, jnp.int32), size)
  raise ValueError(f"unknown mask target mode {mode!r}; choose one of {MASK_TARGETS}.")
