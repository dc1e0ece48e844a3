"""`detect`: a detector's detections of uint8 images as NumPy arrays, one dict per image, in
torchvision's eval-mode output format (models/detection/generalized_rcnn.py: `boxes` (D, 4)
float32 xyxy, `scores` (D,) float32 in decreasing order, `labels` (D,) int64, and a Mask R-CNN's
`masks` (D, 1, H, W) float32 probabilities pasted into the image; only the detections kept).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lct_flax.detection import detector
from lct_flax.detection import segmentation

SIZE_DIVISOR = 32   # the FPN's coarsest stride on C5; both references pad to it


@functools.partial(jax.jit, static_argnums=0)
def _detections(model: detector.TwoStageDetector, variables: Any, images: jax.Array):
  """The model's padded detections of whole canvases (every image fills its canvas)."""
  image_shape = jnp.broadcast_to(jnp.asarray(images.shape[1:3], jnp.int32),
                                 (images.shape[0], 2))
  return model.apply(variables, images, image_shape)


def check_images(images: Any) -> np.ndarray:
  """`images` as a uint8 (N, H, W, 3) array with H and W multiples of 32, else ValueError."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"detect takes uint8 RGB images (N, H, W, 3), got {images.dtype} "
                     f"{images.shape}.")
  height, width = images.shape[1:3]
  if min(images.shape[:3]) < 1 or height % SIZE_DIVISOR or width % SIZE_DIVISOR:
    raise ValueError(f"detect needs image sides that are positive multiples of {SIZE_DIVISOR}, "
                     f"got {height}x{width}; resize or pad the images (zeros at the bottom and "
                     f"right, as both references pad).")
  return images


def detect(model: detector.TwoStageDetector, variables: Any,
           images: Any) -> list[dict[str, np.ndarray]]:
  """Detections of uint8 RGB images (N, H, W, 3), H and W multiples of 32, taken as they are
  (not resized): per image {"boxes": (D, 4) float32 xyxy in input pixels, "scores": (D,)
  float32, decreasing, "labels": (D,) int64 in the source's label ids
  (`Convention.first_label` + class index: torchvision's 1..90 COCO ids for a model from
  `lct_flax.detection.interop`)}; a Mask R-CNN's also "masks": (D, 1, H, W) float32 mask
  probabilities pasted into the image as `Convention.mask_paste` says (> 0.5: the binary masks).
  One compilation per (model, image shape).
  """
  images = check_images(images)
  detections = jax.device_get(_detections(model, variables, images))
  convention = model.settings.convention
  results = []
  for i in range(images.shape[0]):
    count = int(np.sum(detections.valid[i]))
    boxes = np.asarray(detections.boxes[i, :count], np.float32)
    results.append({
        "boxes": boxes,
        "scores": np.asarray(detections.scores[i, :count], np.float32),
        "labels": np.asarray(detections.labels[i, :count], np.int64) + convention.first_label,
    })
    if detections.masks is not None:
      results[-1]["masks"] = segmentation.paste_masks(
          detections.masks[i, :count], boxes, images.shape[1:3],
          mode=convention.mask_paste)[:, None]
  return results
