"""``coco_instances``: COCO-format instance annotations as a tfds dataset, prepared offline.

tfds' own ``coco`` builder only downloads; this one reads the directory a user downloaded and
unzipped from cocodataset.org (``coco_layout``), given as the manual dir, and never touches the
network. Configs:

* ``coco_instances/2017``: COCO 2017 detection (118,287 train / 5,000 validation images, 80
  categories);
* ``coco_instances/shapes``: the generated ``coco_shapes`` dataset, in the same layout.

Everything of the annotation files is kept exactly: original image ids, file names and sizes;
per object (in the file's order) the annotation id, the original category id and its contiguous
``label`` 0..K-1 (categories sorted by id, mmdetection's ``cat2label``), ``bbox`` ``[x, y, w, h]``
and ``area`` as float64, ``iscrowd``, and the segmentation (polygons or RLE) as its compact JSON
text. Images are the original file bytes. Examples are stored in ascending image id order
(``disable_shuffling``), as ArrayRecord files, so that the input pipeline reads them by index.

The builder also stores a per-split index in ``info.metadata`` (in record order: image id,
height, width, and the instance counts that mmdetection's training filter needs), so the input
pipeline plans epochs without reading the records.

Prepare once (see ``lct_flax.detection.data``)::

  python -m lct_flax.detection.data --dataset=coco_instances/2017 --manual_dir=COCO --data_dir=DATA
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os

import numpy as np
from absl import logging
from PIL import Image
import tensorflow_datasets as tfds

from lct_flax.datasets import coco_checks
from lct_flax.datasets import coco_layout

_DOWNLOAD_HINT = {
    "2017": ("download train2017.zip, val2017.zip and annotations_trainval2017.zip from "
             "https://cocodataset.org/#download and unzip them there"),
    "shapes": "write it with `python -m lct_flax.datasets.coco_shapes --output={root}`",
}
# Per-image fields of the split index kept in ``info.metadata``.
INDEX_FIELDS = ("image_id", "height", "width", "num_annotations", "num_boxes", "num_crowd",
                "num_degenerate")
# Keys are spread over the shuffler's key space (2**128): with ``disable_shuffling`` tfds sorts
# by key and buckets by key range, so small keys would put every example into one bucket,
# sorted in memory.
# info.metadata key of the COCO files' `coco_layout.fingerprint` at preparation.
SOURCE_KEY = "source"
_KEY_SPACE = 2**127
# tf.Example keeps floats as float32; raw bytes keep the float64 values of the JSON exactly.
_EXACT = tfds.features.Encoding.BYTES


class CocoLayoutError(FileNotFoundError):
  """The COCO directory lacks a file or directory, or its content does not match the config."""


@dataclasses.dataclass(eq=False)
class CocoInstancesConfig(tfds.core.BuilderConfig):
  """``categories``: (id, name) pairs sorted by id, which is the order of the labels."""

  categories: tuple = ()


def layout_error(config_name: str, root: str, missing: list[str]) -> CocoLayoutError:
  """The one-line error for a COCO root that lacks ``missing`` paths."""
  hint = _DOWNLOAD_HINT[config_name].format(root=root)
  return CocoLayoutError(f"{root} lacks {' and '.join(missing)}: {hint} (the directory needs "
                         f"{', '.join(coco_layout.required_paths())}).")


def _manual_dir(dl_manager, config_name):
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError as error:  # tfds: "Manual directory X does not exist or is empty. ..."
    first_line = str(error).splitlines()[0]
    raise CocoLayoutError(f"{first_line} Put the COCO layout there: "
                          f"{_DOWNLOAD_HINT[config_name].format(root='it')}.") from None


def _check_categories(dataset, expected, path):
  found = tuple(sorted((c["id"], c["name"]) for c in dataset["categories"]))
  if found != tuple(expected):
    unexpected = sorted(set(found) - set(expected))[:3]
    absent = sorted(set(expected) - set(found))[:3]
    raise CocoLayoutError(f"{path} lists {len(found)} categories, not the config's "
                          f"{len(expected)} (unexpected: {unexpected}, absent: {absent}); prepare "
                          f"it with the config its categories belong to (2017 or shapes).")


class CocoInstances(tfds.core.GeneratorBasedBuilder):
  """COCO-format instance annotations (boxes, crowd flags, segmentations), offline."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      CocoInstancesConfig(name="2017", description="COCO 2017 instances (80 categories).",
                          categories=coco_layout.COCO_CATEGORIES),
      CocoInstancesConfig(name="shapes", description="Generated shapes (lct_flax coco_shapes).",
                          categories=coco_layout.SHAPES_CATEGORIES),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "COCO 2017: download train2017.zip, val2017.zip and annotations_trainval2017.zip from "
      "https://cocodataset.org/#download and unzip them into the manual dir, which then holds "
      "annotations/instances_{train,val}2017.json, train2017/ and val2017/. Shapes: "
      "python -m lct_flax.datasets.coco_shapes --output=<manual dir>.")

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord: records read by position (tfds data sources), as the input pipeline does.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self):
    names = [name for _, name in self.builder_config.categories]
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/id": np.int64,
            "image/filename": tfds.features.Text(),
            "image/height": np.int32,
            "image/width": np.int32,
            "objects": tfds.features.Sequence({
                "id": np.int64,
                "category_id": np.int64,
                "label": tfds.features.ClassLabel(names=names),
                "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float64, encoding=_EXACT),
                "area": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=_EXACT),
                "iscrowd": np.bool_,
                "segmentation": tfds.features.Text(),
            }),
        }),
        homepage="https://cocodataset.org",
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    root = _manual_dir(dl_manager, config.name)
    missing = coco_layout.missing_paths(root)
    if missing:
      raise layout_error(config.name, root, missing)
    generators = {}
    self.info.metadata[SOURCE_KEY] = coco_layout.fingerprint(root)
    for split, (image_dir, annotation_file) in coco_layout.SPLITS.items():
      path = os.path.join(root, annotation_file)
      dataset = coco_checks.load(path)
      coco_checks.check_fields(dataset, path)
      _check_categories(dataset, config.categories, path)
      coco_checks.check_segmentations(dataset, path)
      _warn_about_boxes_outside(dataset, path)
      images = sorted(dataset["images"], key=lambda image: image["id"])
      objects = _objects_by_image(dataset, path)
      _check_files(root, image_dir, images, annotation_file)
      images = _decodable(os.path.join(root, image_dir), images)
      self.info.metadata[split] = _index(images, objects)
      generators[split] = self._generate_examples(os.path.join(root, image_dir), images, objects)
    return generators

  def _generate_examples(self, image_dir, images, objects):
    label = {category: i for i, (category, _) in enumerate(self.builder_config.categories)}
    spacing = _KEY_SPACE // max(len(images), 1)
    for position, image in enumerate(images):
      path = os.path.join(image_dir, image["file_name"])
      with open(path, "rb") as f:
        data = f.read()
      _check_size(data, image, path)
      yield position * spacing, {
          "image": data,
          "image/id": image["id"],
          "image/filename": image["file_name"],
          "image/height": image["height"],
          "image/width": image["width"],
          "objects": [{
              "id": a["id"],
              "category_id": a["category_id"],
              "label": label[a["category_id"]],
              "bbox": np.asarray(a["bbox"], np.float64),
              "area": float(a["area"]),
              "iscrowd": bool(a["iscrowd"]),
              "segmentation": json.dumps(a.get("segmentation", []), separators=(",", ":")),
          } for a in objects[image["id"]]],
      }


def _objects_by_image(dataset, path):
  """Annotations per image id, in the file's order; unknown image or category ids refused."""
  image_ids = {image["id"] for image in dataset["images"]}
  category_ids = {category["id"] for category in dataset["categories"]}
  objects = collections.defaultdict(list)
  for annotation in dataset["annotations"]:
    if annotation["image_id"] not in image_ids or annotation["category_id"] not in category_ids:
      raise CocoLayoutError(f"{path}: annotation {annotation['id']} refers to image "
                            f"{annotation['image_id']} / category {annotation['category_id']}, "
                            f"which the file does not list; the file is damaged.")
    objects[annotation["image_id"]].append(annotation)
  return objects


def _warn_about_boxes_outside(dataset, path):
  outside = coco_checks.boxes_outside_their_images(dataset)
  if outside:
    logging.warning("%s: %d of %d annotations have a bbox wholly outside its image (ids %s%s); "
                    "they are kept, clipped to the image border as mmdetection v1 does, where "
                    "they match no anchor: fix them in the file if they are errors.", path,
                    len(outside), len(dataset["annotations"]),
                    ", ".join(map(str, outside[:5])), ", ..." if len(outside) > 5 else "")


def _check_files(root, image_dir, images, annotation_file):
  present = set(os.listdir(os.path.join(root, image_dir)))
  missing = [image["file_name"] for image in images if image["file_name"] not in present]
  if missing:
    raise CocoLayoutError(f"{os.path.join(root, image_dir)} lacks {len(missing)} images listed "
                          f"in {annotation_file} (e.g. {missing[0]}); unzip the complete "
                          f"{image_dir}.zip there.")


def _decodable(image_dir, images):
  """`images` less those whose pixels do not decode (warned with their count and names)."""
  bad = set(coco_checks.undecodable_images(image_dir, images))
  if len(bad) == len(images):
    raise CocoLayoutError(f"none of the {len(images)} images in {image_dir} decodes; unzip "
                          f"them again.")
  if bad:
    names = sorted(bad)
    logging.warning("%s: skipped %d of %d images that do not decode (truncated or not images): "
                    "%s%s", image_dir, len(bad), len(images), ", ".join(names[:5]),
                    ", ..." if len(names) > 5 else "")
  return [image for image in images if image["file_name"] not in bad]


def _check_size(data, image, path):
  width, height = Image.open(io.BytesIO(data)).size  # Reads the header only.
  if (height, width) != (image["height"], image["width"]):
    raise CocoLayoutError(f"{path} is {height}x{width} (h x w) but its annotation file says "
                          f"{image['height']}x{image['width']}; the image or the file is wrong.")


def _index(images, objects):
  """The split index stored in ``info.metadata``: one list per ``INDEX_FIELDS`` entry."""
  rows = []
  for image in images:
    annotations = objects[image["id"]]
    dropped = coco_layout.degenerate([a["bbox"] for a in annotations],
                                     [a["area"] for a in annotations])
    crowd = np.array([bool(a["iscrowd"]) for a in annotations], bool) & ~dropped
    rows.append((image["id"], image["height"], image["width"], len(annotations),
                 int(np.sum(~dropped & ~crowd)), int(np.sum(crowd)), int(np.sum(dropped))))
  return {field: [int(row[i]) for row in rows] for i, field in enumerate(INDEX_FIELDS)}
