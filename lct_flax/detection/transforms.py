"""Detection geometry on the host, in NumPy: rescale sizes, canvases, ground-truth boxes, results.

The image itself is resized in ``data`` (TensorFlow); this module says to which size, on which
canvas, and where the boxes go, following mmdetection v1 (``mmcv.imrescale``, ``Resize``,
``RandomFlip``) with the box conventions of ``data_config.BoxConvention``.
"""

from __future__ import annotations

import numpy as np

from lct_flax.datasets import coco_layout
from lct_flax.detection.data_config import BoxConvention


def rescale_size(height: int, width: int, img_scale) -> tuple[int, int, float]:
  """``(new_height, new_width, scale_factor)`` by mmcv's keep-ratio rule (``mmcv.rescale_size``).

  ``scale_factor = min(max(img_scale) / max(h, w), min(img_scale) / min(h, w))``: the largest
  scale at which the long edge fits ``max(img_scale)`` and the short edge ``min(img_scale)``;
  sides are ``int(side * scale_factor + 0.5)``.
  """
  long_edge, short_edge = max(img_scale), min(img_scale)
  factor = min(long_edge / max(height, width), short_edge / min(height, width))
  return int(height * factor + 0.5), int(width * factor + 0.5), factor


def box_scale(height: int, width: int, resized, factor: float,
              convention: BoxConvention) -> tuple[float, float]:
  """(y, x) factors that map original pixel boxes onto the resized image (and back, divided)."""
  if convention.per_axis_scale:
    return resized[0] / height, resized[1] / width
  return factor, factor


def choose_canvas(height: int, width: int, resized, canvases) -> int | None:
  """Index of the canvas an image goes to, or None when its resized size fits none.

  The canvas of least area that holds the resized image; on a tie the one whose orientation
  matches the image's (landscape iff ``width > height``, the flag of mmdetection's
  GroupSampler), then the first listed.
  """
  landscape = width > height
  fitting = [(h * w, (w > h) != landscape, i) for i, (h, w) in enumerate(canvases)
             if h >= resized[0] and w >= resized[1]]
  return min(fitting)[2] if fitting else None


def annotation_boxes(bbox_xywh, convention: BoxConvention) -> np.ndarray:
  """COCO ``[x, y, w, h]`` -> xyxy (float64) in original pixels: ``x2 = x + w - pixel_offset``."""
  xywh = np.asarray(bbox_xywh, np.float64).reshape(-1, 4)
  offset = convention.pixel_offset
  return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - offset], axis=1)


def transform_boxes(xyxy, scale_yx, resized, flip: bool, convention: BoxConvention) -> np.ndarray:
  """Original-pixel xyxy -> xyxy on the resized (and flipped) image, float32.

  Scaled by ``scale_yx``, clipped to ``[0, W - offset] x [0, H - offset]`` when the convention
  clips, and mirrored ``x -> W - offset - x`` when flipped (mmdetection's ``bbox_flip``).
  """
  sy, sx = scale_yx
  height, width = resized
  offset = convention.pixel_offset
  boxes = np.asarray(xyxy, np.float64).reshape(-1, 4) * [sx, sy, sx, sy]
  if convention.clip:
    boxes = np.clip(boxes, 0.0, [width - offset, height - offset] * 2)
  if flip:
    boxes = np.stack([width - offset - boxes[:, 2], boxes[:, 1],
                      width - offset - boxes[:, 0], boxes[:, 3]], axis=1)
  return boxes.astype(np.float32)


def results_xywh(xyxy, scale_yx, convention: BoxConvention) -> np.ndarray:
  """Boxes xyxy on the resized image -> COCO ``[x, y, w, h]`` in original pixels (float64).

  Divided by ``scale_yx``; widths ``x2 - x1 + pixel_offset`` (mmdetection v1's ``xyxy2xywh``
  with its +1, torchvision's without).
  """
  sy, sx = (float(v) for v in scale_yx)
  boxes = np.asarray(xyxy, np.float64).reshape(-1, 4) / [sx, sy, sx, sy]
  sizes = boxes[:, 2:] - boxes[:, :2] + convention.pixel_offset
  return np.concatenate([boxes[:, :2], sizes], axis=1)


def kept_annotations(objects) -> np.ndarray:
  """bool (A,): the annotations of a record's ``objects`` that are not degenerate
  (``coco_layout.degenerate``); they fill an image's instance slots in this order."""
  bbox = np.asarray(objects["bbox"], np.float64).reshape(-1, 4)
  return ~coco_layout.degenerate(bbox, objects["area"])


def image_instances(objects, *, scale_yx, resized, flip: bool, convention: BoxConvention,
                    max_instances: int) -> dict:
  """The instance fields of one train image, padded to ``max_instances``.

  ``objects``: a record's ``objects`` (``bbox``, ``area``, ``iscrowd``, ``label`` per annotation,
  in the annotation file's order). Degenerate annotations are dropped (``coco_layout.degenerate``);
  the others keep their order. Returns ``boxes`` f32 (M, 4), ``labels`` i32 (M,), ``valid`` bool
  (M,) (real non-crowd instances) and ``crowd`` bool (M,) (real crowd instances).
  """
  bbox = np.asarray(objects["bbox"], np.float64).reshape(-1, 4)
  keep = kept_annotations(objects)
  count = int(keep.sum())
  if count > max_instances:
    raise ValueError(f"{count} instances exceed max_instances={max_instances}")
  crowd = np.asarray(objects["iscrowd"], bool).reshape(-1)[keep]
  fields = {
      "boxes": np.zeros((max_instances, 4), np.float32),
      "labels": np.zeros((max_instances,), np.int32),
      "valid": np.zeros((max_instances,), bool),
      "crowd": np.zeros((max_instances,), bool),
  }
  fields["boxes"][:count] = transform_boxes(
      annotation_boxes(bbox[keep], convention), scale_yx, resized, flip, convention)
  fields["labels"][:count] = np.asarray(objects["label"], np.int64).reshape(-1)[keep]
  fields["valid"][:count] = ~crowd
  fields["crowd"][:count] = crowd
  return fields
