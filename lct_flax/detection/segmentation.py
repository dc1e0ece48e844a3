"""Instance masks on the host, in NumPy and pycocotools: COCO segmentations decoded and carried onto
the training canvas, and detections' mask probabilities pasted into the image and RLE-encoded.

Training (`canvas_masks`): each kept instance's segmentation is decoded at the original image
size as pycocotools' ``COCO.annToRLE`` does (mmdetection v1's ``LoadAnnotations._poly2mask``),
resized with nearest neighbours to the resized image (``mmcv.imrescale(mask, scale,
interpolation='nearest')``: cv2's INTER_NEAREST, source index floor(i * source / target)),
flipped with the image (``mask[:, ::-1]``), placed at the top-left of the canvas (zeros around,
mmdetection's Pad) and packed eight pixels to a byte along the width (np.packbits). A batch holds
B x max_instances x Hc x ceil(Wc / 8) bytes: 17.2 MB per 800x1344 COCO canvas at
max_instances=128 (69 MB per 4-image step), 40 KB per 128x160 shapes canvas at 16. The device
samples them at the positive RoIs (`mask_targets.mask_targets`). Crowd instances get no mask
(never matched; mmdetection loads no crowd masks).

Results (`paste_masks`, `encode`): a detection's m x m probabilities (its class's channel, 28 x 28)
are resized bilinearly into its box in the image, as `Convention.mask_paste` says, binarised at
0.5 and RLE-encoded (pycocotools, counts as text) for the COCO results JSON.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

PASTE_MODES = ("mmdet_v1", "torchvision")
MASK_THRESHOLD = 0.5      # mmdet v1's test_cfg.rcnn.mask_thr_binary; torchvision's references


def decode(segmentation: Any, height: int, width: int) -> np.ndarray:
  """uint8 (height, width) 0/1 mask of a COCO segmentation (or its JSON text): polygons (a list of
  flat [x, y, ...] lists, merged), uncompressed RLE ({"counts": [runs], "size"}, COCO's crowd
  regions) or compressed RLE ({"counts": "text"}), as ``COCO.annToRLE``; [] is an empty mask."""
  if isinstance(segmentation, (str, bytes)):
    segmentation = json.loads(segmentation)
  if isinstance(segmentation, list):
    if not segmentation:
      return np.zeros((height, width), np.uint8)
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation["counts"], list):
    rle = mask_utils.frPyObjects(segmentation, height, width)
  else:
    rle = segmentation
  return mask_utils.decode(rle)


def nearest_indices(source: int, target: int) -> np.ndarray:
  """Source index of each of `target` pixels resized from `source` by cv2's INTER_NEAREST:
  floor(i / (target / source)) in double precision, at most source - 1."""
  return np.minimum(np.floor(np.arange(target) * (1.0 / (target / source))),
                    source - 1).astype(np.int64)


def canvas_masks(segmentations: Sequence[Any], crowd: Sequence[bool], *, original_shape,
                 resized_shape, flip: bool, canvas, max_instances: int) -> np.ndarray:
  """uint8 (max_instances, Hc, ceil(Wc / 8)): the packed masks of an image's kept instances in
  the order of its instance slots (`transforms.image_instances`), on its canvas; crowd and
  padding slots are zeros. original_shape, resized_shape and canvas are (height, width)."""
  height, width = (int(v) for v in original_shape)
  new_h, new_w = (int(v) for v in resized_shape)
  canvas_h, canvas_w = (int(v) for v in canvas)
  packed = np.zeros((max_instances, canvas_h, -(-canvas_w // 8)), np.uint8)
  rows = nearest_indices(height, new_h)
  cols = nearest_indices(width, new_w)
  if flip:
    cols = cols[::-1]
  placed = np.zeros((canvas_h, canvas_w), np.uint8)
  for slot, (segmentation, is_crowd) in enumerate(zip(segmentations, crowd)):
    if is_crowd:
      continue
    placed[:new_h, :new_w] = decode(segmentation, height, width)[rows[:, None], cols[None, :]]
    packed[slot] = np.packbits(placed, axis=1)
  return packed


def _linear_axis(source: int, target: int):
  """Neighbours and weights of a bilinear resize along one axis, as torch's F.interpolate
  (mode="bilinear", align_corners=False) and cv2's INTER_LINEAR compute them in float32: source
  position (i + 0.5) * source / target - 0.5, clamped at 0, the last pixel repeated."""
  scale = np.float32(source) / np.float32(target)
  position = np.maximum((np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale
                        - np.float32(0.5), np.float32(0.0))
  low = np.minimum(np.floor(position).astype(np.int64), source - 1)
  high = np.minimum(low + 1, source - 1)
  frac = np.where(low < source - 1, position - low.astype(np.float32), np.float32(0.0))
  return low, high, (np.float32(1.0) - frac).astype(np.float32), frac.astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """float32 (height, width) bilinear resize of a 2-D float32 array (no antialiasing)."""
  y_low, y_high, wy_low, wy_high = _linear_axis(image.shape[0], height)
  x_low, x_high, wx_low, wx_high = _linear_axis(image.shape[1], width)
  image = np.asarray(image, np.float32)
  top = image[y_low][:, x_low] * wx_low + image[y_low][:, x_high] * wx_high
  bottom = image[y_high][:, x_low] * wx_low + image[y_high][:, x_high] * wx_high
  return top * wy_low[:, None] + bottom * wy_high[:, None]


def _paste_geometry(probabilities: np.ndarray, boxes: np.ndarray, mode: str):
  """The probabilities to resize (padded for torchvision) and the integer boxes they fill."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if mode == "mmdet_v1":
    return probabilities, boxes.astype(np.int32)
  if mode == "torchvision":   # expand_masks(padding=1) and expand_boxes, in float32
    size = probabilities.shape[-1]
    padded = np.pad(probabilities, ((0, 0), (1, 1), (1, 1)))
    scale = np.float32((size + 2) / size)
    half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5) * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * np.float32(0.5)
    return padded, np.concatenate([centre - half, centre + half], axis=1).astype(np.int64)
  raise ValueError(f"unknown mask paste mode {mode!r}; choose one of {PASTE_MODES}.")


def paste_masks(probabilities: np.ndarray, boxes: np.ndarray, image_shape, *,
                mode: str = "mmdet_v1", threshold: float | None = None) -> np.ndarray:
  """Each detection's (m, m) mask probabilities in its box of an image of `image_shape` (h, w):
  float32 (D, h, w) probabilities, or uint8 0/1 (> threshold) with a threshold. boxes (D, 4) xyxy
  in the image's pixels. `mode` (`Convention.mask_paste`): "mmdet_v1" fills the box truncated to
  integers, x2 - x1 + 1 by y2 - y1 + 1 pixels (fcn_mask_head.py get_seg_masks); "torchvision"
  fills the box scaled by (m + 2) / m and truncated with the probabilities padded by a zero
  pixel (roi_heads.py paste_masks_in_image). Both resize bilinearly and clip to the image."""
  probabilities = np.asarray(probabilities, np.float32)
  height, width = (int(v) for v in image_shape)
  sources, boxes = _paste_geometry(probabilities, boxes, mode)
  dtype = np.float32 if threshold is None else np.uint8
  pasted = np.zeros((len(boxes), height, width), dtype)
  for d, (source, (x1, y1, x2, y2)) in enumerate(zip(sources, boxes)):
    box_w, box_h = max(int(x2 - x1 + 1), 1), max(int(y2 - y1 + 1), 1)
    top, left = max(int(y1), 0), max(int(x1), 0)
    bottom, right = min(int(y1) + box_h, height), min(int(x1) + box_w, width)
    if bottom <= top or right <= left:
      continue
    patch = resize_bilinear(source, box_h, box_w)[top - y1:bottom - y1, left - x1:right - x1]
    pasted[d, top:bottom, left:right] = patch if threshold is None else patch > threshold
  return pasted


def encode(masks: np.ndarray) -> list[dict]:
  """COCO compressed RLEs ({"size": [h, w], "counts": text}) of uint8 0/1 masks (D, h, w)."""
  if not len(masks):
    return []
  rles = mask_utils.encode(np.asfortranarray(np.asarray(masks, np.uint8).transpose(1, 2, 0)))
  return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
          for rle in rles]


def result_segmentations(probabilities: np.ndarray, boxes: np.ndarray, scale_yx,
                         original_shape, mode: str) -> list[dict]:
  """The RLEs of one image's detections in its original pixels: boxes (D, 4) in resized-image
  pixels divided by the batch's `scale` (mmdet v1: by its scale_factor; torchvision: times the
  original / resized ratio), probabilities (D, m, m) pasted as `mode` says, > 0.5."""
  sy, sx = (float(v) for v in scale_yx)
  boxes = np.asarray(boxes, np.float32) / np.asarray([sx, sy, sx, sy], np.float32)
  return encode(paste_masks(probabilities, boxes, original_shape, mode=mode,
                            threshold=MASK_THRESHOLD))
