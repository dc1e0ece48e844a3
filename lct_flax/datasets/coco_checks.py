"""Checks of a COCO instances file and its images before preparation, so that what the builder
stores is what training, evaluation and pycocotools can read: one line per problem, naming the
file, the image or annotation id and the field.

- `load`: the JSON (a truncated file is named, with where it breaks).
- `check_fields`: the top-level lists, and per image and annotation the fields the builder and
  pycocotools read, with their types (a bbox is 4 finite numbers).
- `check_segmentations`: each segmentation as pycocotools decodes it (polygons of at least 3
  points and an even number of coordinates, an RLE of the image's size, not empty).
- `undecodable_images`: the images that do not decode to the end (truncated or not images).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from PIL import Image


class CocoAnnotationError(ValueError):
  """An annotation file that cannot be prepared as it is."""


IMAGE_FIELDS = {"id": int, "file_name": str, "height": int, "width": int}
ANNOTATION_FIELDS = {"id": int, "image_id": int, "category_id": int, "bbox": list,
                     "area": (int, float), "iscrowd": (int, bool)}


def load(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise CocoAnnotationError(
        f"{path} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
        f"the file is truncated or damaged: unpack it again.") from None


def _field_problem(record: dict, fields: dict) -> Optional[str]:
  for name, kind in fields.items():
    if name not in record:
      return f"has no '{name}'"
    if not isinstance(record[name], kind) or (kind is int and isinstance(record[name], bool)):
      return f"has '{name}' {record[name]!r}"
  return None


def _bbox_problem(bbox: list) -> Optional[str]:
  if len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
    return f"has 'bbox' {bbox!r}, not [x, y, width, height]"
  return None


def check_fields(dataset: Any, path: str) -> None:
  """The lists `images`, `annotations`, `categories`, and the fields each entry needs."""
  if not isinstance(dataset, dict):
    raise CocoAnnotationError(f"{path} holds no COCO instances object; it is not an annotation "
                              f"file.")
  for key in ("images", "annotations", "categories"):
    if not isinstance(dataset.get(key), list):
      raise CocoAnnotationError(f"{path} has no '{key}' list; it is not a COCO instances file.")
  if not dataset["images"]:
    raise CocoAnnotationError(f"{path} lists no images; its split would be empty.")
  for image in dataset["images"]:
    problem = _field_problem(image, IMAGE_FIELDS) if isinstance(image, dict) else "is no object"
    if problem:
      raise CocoAnnotationError(f"{path}: image {_id(image)} {problem}.")
  for annotation in dataset["annotations"]:
    problem = (_field_problem(annotation, ANNOTATION_FIELDS) or _bbox_problem(annotation["bbox"])
               if isinstance(annotation, dict) else "is no object")
    if problem:
      raise CocoAnnotationError(f"{path}: annotation {_id(annotation)} {problem}.")


def _id(record: Any) -> str:
  return repr(record.get("id")) if isinstance(record, dict) else "?"


def segmentation_problem(segmentation: Any, height: int, width: int) -> Optional[str]:
  """Why pycocotools cannot decode `segmentation` for a `height` x `width` image, or None."""
  if isinstance(segmentation, list):
    if not segmentation:
      return "an empty segmentation"
    for polygon in segmentation:
      if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) for v in polygon):
        return "a polygon that is not a list of numbers"
      if len(polygon) % 2:
        return f"a polygon of {len(polygon)} coordinates (an odd number)"
      if len(polygon) < 6:
        return f"a polygon of {len(polygon) // 2} points (fewer than 3)"
    return None
  if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
    if list(segmentation["size"]) != [height, width]:
      return f"an RLE of size {segmentation['size']} on a {height}x{width} image"
    counts = segmentation["counts"]
    if isinstance(counts, list):
      if sum(counts) != height * width:
        return f"an RLE whose counts sum to {sum(counts)}, not {height * width}"
    elif not isinstance(counts, str):
      return "an RLE whose counts are neither a list nor a string"
    return None
  return "a segmentation that is neither polygons nor an RLE"


def boxes_outside_their_images(dataset: dict) -> list:
  """Ids of the annotations whose bbox shares no area with its image (annotation errors: training
  keeps them, clipped to the border as mmdetection v1 does, where they match nothing)."""
  sizes = {image["id"]: (image["height"], image["width"]) for image in dataset["images"]}
  outside = []
  for annotation in dataset["annotations"]:
    height, width = sizes[annotation["image_id"]]
    x, y, w, h = annotation["bbox"]
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
      outside.append(annotation["id"])
  return outside


def check_segmentations(dataset: dict, path: str) -> None:
  """Refuses the file if any annotation's segmentation cannot be decoded, with the count and the
  first ids."""
  sizes = {image["id"]: (image["height"], image["width"]) for image in dataset["images"]}
  bad = []
  for annotation in dataset["annotations"]:
    height, width = sizes.get(annotation["image_id"], (0, 0))
    problem = segmentation_problem(annotation.get("segmentation"), height, width)
    if problem:
      bad.append((annotation["id"], problem))
  if bad:
    shown = "; ".join(f"annotation {i}: {problem}" for i, problem in bad[:3])
    raise CocoAnnotationError(
        f"{path}: {len(bad)} annotations have segmentations pycocotools cannot decode ({shown}"
        f"{'; ...' if len(bad) > 3 else ''}); fix or remove them, then prepare again.")


def undecodable_images(image_dir: str, images: list) -> list[str]:
  """The file names among `images` whose pixels do not decode completely."""
  bad = []
  for image in images:
    try:
      with Image.open(os.path.join(image_dir, image["file_name"])) as opened:
        opened.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
      bad.append(image["file_name"])
  return bad
