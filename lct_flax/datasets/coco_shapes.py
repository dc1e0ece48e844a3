"""Writes ``coco_shapes``: a small generated COCO-format detection dataset, in COCO 2017's layout.

The embedded detection dataset of this project (the demo and the tests): circles, triangles,
rectangles and stars in saturated colours on textured grey backgrounds, in landscape, portrait
and square images of 96-160 px, written exactly as COCO 2017 is distributed
(``annotations/instances_{train,val}2017.json``, ``train2017/*.jpg``, ``val2017/*.jpg``), so that
the real ``coco_instances`` builder prepares it (config ``shapes``). Everything is a pure function
of the seed: the same seed writes byte-identical files.

Annotations are what pycocotools expects of COCO: each object one polygon (coordinates with two
decimals), ``bbox`` the polygon's extent ``[x, y, w, h]``, ``area`` the pixel area of the polygon
as pycocotools rasterises it, ``iscrowd`` 0. Some images hold a crowd region, as COCO's do: a
cluster of small shapes of one class annotated once, ``iscrowd`` 1, with an uncompressed RLE mask
and the mask's bounding box and area. Category ids are not contiguous (like COCO's 1..90 for 80
classes), and image ids are sparse and listed out of order, so the id mappings are exercised.

Objects of an image do not overlap (a polygon is then the visible region), stay inside the image
and measure 22-50% of its shorter side, 1-4 per image: the task is learnable by a tiny detector.

  python -m lct_flax.datasets.coco_shapes --output=DIR [--num_train=320 --num_val=80 --seed=0]
"""

from __future__ import annotations

import colorsys
import dataclasses
import io
import json
import os

from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw
from pycocotools import mask as mask_utils

from lct_flax.datasets import coco_layout

CATEGORIES = coco_layout.SHAPES_CATEGORIES
# (height, width): landscape, square and portrait.
IMAGE_SIZES = ((96, 128), (120, 160), (96, 160), (128, 128), (128, 96), (160, 120), (160, 96))

_SUPERSAMPLING = 4          # the shapes are drawn at 4x and averaged down: smooth edges
_MARGIN = 2.0               # px kept free around each object and to the image border
_OBJECT_SIZE = (0.22, 0.5)  # object diameter as a fraction of the image's shorter side
_CROWD_SIZE = (0.3, 0.45)   # crowd region side, same unit
_CROWD_MEMBER_SIZE = (6.0, 10.0)  # px
_PLACEMENT_ATTEMPTS = 60


@dataclasses.dataclass(frozen=True)
class ShapesCoco:
  """What was written: ``root`` (the COCO layout), images and annotations per tfds split."""

  root: str
  num_images: dict
  num_annotations: dict


def _regular_polygon(radii, rotation, cx, cy):
  """Vertices (k, 2) at equal angles from ``rotation``, radius ``radii[i]``, centred at cx, cy."""
  radii = np.asarray(radii, np.float64)
  angles = rotation + 2.0 * np.pi * np.arange(len(radii)) / len(radii)
  return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _shape_vertices(rng, name, size, cx, cy):
  """Vertices (k, 2) of a ``name`` shape of diameter about ``size`` centred at (cx, cy)."""
  rotation = rng.uniform(0.0, 2.0 * np.pi)
  if name == "circle":
    return _regular_polygon(np.full(32, size / 2), 0.0, cx, cy)
  if name == "triangle":
    return _regular_polygon(np.full(3, size / 2), rotation, cx, cy)
  if name == "star":
    return _regular_polygon(np.tile([size / 2, 0.2 * size], 5), rotation, cx, cy)
  if name == "rectangle":
    long_side, short_side = size, size * rng.uniform(0.45, 0.8)
    w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    angle = rng.uniform(-np.pi / 7, np.pi / 7)
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return corners @ rotate.T + [cx, cy]
  raise ValueError(f"unknown shape {name!r}")


def _polygon(vertices):
  """A COCO polygon: flat [x1, y1, x2, y2, ...] with two decimals."""
  return [round(float(v), 2) for v in np.asarray(vertices).reshape(-1)]


def _extent(polygon):
  """``[x, y, w, h]`` of a flat polygon's vertices (COCO's bbox of a polygon annotation)."""
  xs, ys = polygon[0::2], polygon[1::2]
  return [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def _mask(polygons, height, width):
  """uint8 (height, width) union of flat polygons, as pycocotools rasterises them."""
  rles = mask_utils.frPyObjects(polygons, height, width)
  return mask_utils.decode(mask_utils.merge(rles))


def uncompressed_rle(mask):
  """COCO's uncompressed RLE of a binary (h, w) mask: column-major runs, starting with zeros."""
  flat = np.asarray(mask, np.uint8).reshape(-1, order="F")
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  runs = np.diff(bounds).tolist()
  if flat.size and flat[0]:
    runs = [0] + runs
  return {"counts": runs, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _background(rng, height, width):
  """float (h, w, 3): a muted random grey-ish colour + three sinusoid gratings + pixel noise."""
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  pixels = rng.uniform(70.0, 190.0) + rng.uniform(-18.0, 18.0, size=3)
  pixels = np.broadcast_to(pixels, (height, width, 3)).copy()
  for _ in range(3):
    angle, frequency = rng.uniform(0.0, np.pi), rng.uniform(0.08, 0.6)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    grating = np.sin(frequency * (np.cos(angle) * xs + np.sin(angle) * ys) + phase)
    pixels += rng.uniform(6.0, 14.0) * grating[..., None]
  return pixels + rng.normal(0.0, 5.0, size=pixels.shape)


def _paint(pixels, vertices, colour):
  """Composites a flat-coloured polygon onto ``pixels`` (in place), antialiased by supersampling.

  COCO polygon coordinates put pixel (i, j)'s centre at (j + 0.5, i + 0.5); PIL puts the centre of
  supersampled pixel k at k, hence the -0.5.
  """
  height, width = pixels.shape[:2]
  canvas = Image.new("L", (width * _SUPERSAMPLING, height * _SUPERSAMPLING), 0)
  points = [tuple(p) for p in np.asarray(vertices) * _SUPERSAMPLING - 0.5]
  ImageDraw.Draw(canvas).polygon(points, fill=255)
  alpha = np.asarray(canvas, np.float64).reshape(
      height, _SUPERSAMPLING, width, _SUPERSAMPLING).mean(axis=(1, 3))[..., None] / 255.0
  pixels *= 1.0 - alpha
  pixels += alpha * colour


def _colour(rng):
  """A saturated, bright RGB colour (0..255), unlike the grey-ish backgrounds."""
  rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
  return np.array(rgb) * 255.0


def _category(rng):
  return int(rng.choice([category for category, _ in CATEGORIES]))


def _free(box, taken):
  """Whether ``box`` [x0, y0, x1, y1] keeps ``_MARGIN`` from every box in ``taken``."""
  x0, y0, x1, y1 = box
  return all(x1 + _MARGIN <= a0 or a1 + _MARGIN <= x0 or y1 + _MARGIN <= b0 or b1 + _MARGIN <= y0
             for a0, b0, a1, b1 in taken)


def _place(rng, height, width, size, taken):
  """A centre for an object of diameter ``size`` inside the image, clear of ``taken``; or None."""
  low = size / 2 + _MARGIN
  if 2 * low > min(height, width):
    return None
  for _ in range(_PLACEMENT_ATTEMPTS):
    cx, cy = rng.uniform(low, width - low), rng.uniform(low, height - low)
    box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    if _free(box, taken):
      taken.append(box)
      return cx, cy
  return None


def _object(rng, pixels, category, cx, cy, size):
  """Paints one shape and returns its annotation fields (polygon, bbox, area, iscrowd 0)."""
  height, width = pixels.shape[:2]
  vertices = _shape_vertices(rng, dict(CATEGORIES)[category], size, cx, cy)
  polygon = _polygon(vertices)
  _paint(pixels, np.reshape(polygon, (-1, 2)), _colour(rng))
  area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))))
  return {"category_id": category, "segmentation": [polygon], "area": area,
          "bbox": _extent(polygon), "iscrowd": 0}


def _crowd(rng, pixels, category, cx, cy, side):
  """Paints a cluster of small shapes; returns one crowd annotation (uncompressed RLE)."""
  height, width = pixels.shape[:2]
  polygons = []
  for _ in range(rng.integers(6, 11)):
    size = rng.uniform(*_CROWD_MEMBER_SIZE)
    half = (side - size) / 2
    x, y = cx + rng.uniform(-half, half), cy + rng.uniform(-half, half)
    polygon = _polygon(_shape_vertices(rng, dict(CATEGORIES)[category], size, x, y))
    polygons.append(polygon)
    _paint(pixels, np.reshape(polygon, (-1, 2)), _colour(rng))
  rle = uncompressed_rle(_mask(polygons, height, width))
  encoded = mask_utils.frPyObjects(rle, height, width)
  return {"category_id": category, "segmentation": rle,
          "area": float(mask_utils.area(encoded)),
          "bbox": [float(v) for v in mask_utils.toBbox(encoded)], "iscrowd": 1}


def _degenerate(rng, height, width, category):
  """An annotation whose box is narrower than 1 px (mmdetection drops such boxes)."""
  x, y = rng.uniform(2, width - 3), rng.uniform(2, height - 12)
  polygon = _polygon([[x, y], [x + 0.5, y], [x + 0.5, y + 10], [x, y + 10]])
  encoded = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
  return {"category_id": category, "segmentation": [polygon],
          "area": float(mask_utils.area(encoded)), "bbox": _extent(polygon), "iscrowd": 0}


def _image(rng, *, size, num_objects, crowd, crowd_only):
  """Pixels (uint8) and annotations (without ids) of one image."""
  height, width = size
  pixels = _background(rng, height, width)
  annotations, taken = [], []
  for _ in range(0 if crowd_only else num_objects):
    diameter = rng.uniform(*_OBJECT_SIZE) * min(height, width)
    centre = _place(rng, height, width, diameter, taken)
    if centre is not None:
      annotations.append(_object(rng, pixels, _category(rng), *centre, diameter))
  if crowd or crowd_only:  # After the objects: an image with objects always keeps one.
    side = rng.uniform(*_CROWD_SIZE) * min(height, width)
    centre = _place(rng, height, width, side, taken)
    if centre is not None:
      annotations.append(_crowd(rng, pixels, _category(rng), *centre, side))
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8), annotations


def _jpeg(pixels, quality):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def write_shapes_coco(root, *, num_train=320, num_val=80, seed=0, image_sizes=IMAGE_SIZES,
                      objects_per_image=(1, 4), crowd_fraction=0.15, empty_train=3, empty_val=1,
                      crowd_only_train=0, degenerate_boxes=0, jpeg_quality=90):
  """Writes the dataset under ``root`` in COCO 2017's layout and returns a ``ShapesCoco``.

  ``objects_per_image``: inclusive range of shapes per image (fewer when they do not fit);
  ``crowd_fraction``: share of images that also get a crowd region; ``image_sizes``: the
  (height, width) choices. Like COCO, some images have no annotations: the first
  ``empty_train``/``empty_val`` images of each split. For the data tests, the next
  ``crowd_only_train`` train images hold only a crowd region, and the next ``degenerate_boxes``
  train images get one extra annotation whose box is 0.5 px wide (mmdetection drops both kinds).
  """
  rng = np.random.default_rng(seed)
  counts = {"train": num_train, "validation": num_val}
  image_ids = rng.choice(np.arange(1, 1_000_000), size=num_train + num_val, replace=False)
  next_annotation_id = int(rng.integers(1, 1000))
  num_images, num_annotations = {}, {}
  for split, (image_dir, annotation_file) in coco_layout.SPLITS.items():
    os.makedirs(os.path.join(root, image_dir), exist_ok=True)
    split_ids, image_ids = image_ids[:counts[split]], image_ids[counts[split]:]
    empty = empty_train if split == "train" else empty_val
    crowd_only = range(empty, empty + (crowd_only_train if split == "train" else 0))
    degenerate = range(crowd_only.stop, crowd_only.stop + (
        degenerate_boxes if split == "train" else 0))
    images, annotations = [], []
    for n, image_id in enumerate(split_ids):
      size = tuple(image_sizes[rng.integers(len(image_sizes))])
      pixels, objects = _image(
          rng, size=size, num_objects=0 if n < empty else rng.integers(
              objects_per_image[0], objects_per_image[1] + 1),
          crowd=n >= empty and rng.random() < crowd_fraction, crowd_only=n in crowd_only)
      if n in degenerate:
        objects.append(_degenerate(rng, *size, CATEGORIES[0][0]))
      file_name = f"{int(image_id):012d}.jpg"
      _write_bytes(os.path.join(root, image_dir, file_name), _jpeg(pixels, jpeg_quality))
      images.append({"id": int(image_id), "file_name": file_name, "height": size[0],
                     "width": size[1], "license": 1})
      for fields in objects:
        annotations.append({"id": next_annotation_id, "image_id": int(image_id), **fields})
        next_annotation_id += int(rng.integers(1, 4))
    order = rng.permutation(len(images))  # COCO's files do not list images by id either.
    _write_annotation_file(os.path.join(root, annotation_file), [images[i] for i in order],
                           annotations)
    num_images[split], num_annotations[split] = len(images), len(annotations)
  return ShapesCoco(os.fspath(root), num_images, num_annotations)


def _write_bytes(path, data):
  with open(path, "wb") as f:
    f.write(data)


def _write_annotation_file(path, images, annotations):
  """A COCO instances file of `images` and `annotations` over the shapes' categories."""
  dataset = {
      "info": {"description": "lct-flax coco_shapes", "version": "1.0", "year": 2017,
               "contributor": "lct_flax.datasets.coco_shapes", "date_created": "", "url": ""},
      "licenses": [{"id": 1, "name": "generated", "url": ""}],
      "images": images,
      "annotations": annotations,
      "categories": [{"id": i, "name": name, "supercategory": "shape"}
                     for i, name in CATEGORIES],
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(dataset, f)


def _main(argv):
  del argv
  values = flags.FLAGS
  written = write_shapes_coco(values.output, num_train=values.num_train, num_val=values.num_val,
                              seed=values.seed)
  print(f"coco_shapes written to {written.root}: {written.num_images} images, "
        f"{written.num_annotations} annotations (its tfds records: `python -m "
        f"lct_flax.detection.data --dataset=coco_instances/shapes --manual_dir={written.root} "
        f"--data_dir=DIR`; the demo scripts run it).")


if __name__ == "__main__":
  from lct_flax import cli

  flags.DEFINE_string("output", None, "Directory to write the COCO layout into.", required=True)
  flags.DEFINE_integer("num_train", 320, "Training images.")
  flags.DEFINE_integer("num_val", 80, "Validation images.")
  flags.DEFINE_integer("seed", 0, "Seed; the same seed writes identical files.")
  cli.run(_main)
