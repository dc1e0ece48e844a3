"""The COCO 2017 directory layout and the categories of COCO and of coco_shapes (no TensorFlow).

The layout users download from cocodataset.org (train2017.zip, val2017.zip and
annotations_trainval2017.zip, unzipped into one directory)::

  annotations/instances_train2017.json   train2017/000000000009.jpg ...
  annotations/instances_val2017.json     val2017/000000000139.jpg ...

``coco_shapes`` writes the same layout, so one builder (``coco_instances``) prepares both.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

# tfds split -> (image directory, annotation file), relative to the COCO root directory.
SPLITS = {
    "train": ("train2017", os.path.join("annotations", "instances_train2017.json")),
    "validation": ("val2017", os.path.join("annotations", "instances_val2017.json")),
}

# (category id, name) of COCO's 80 detection categories, ids as in the annotation files (1..90
# with gaps); the contiguous labels 0..79 follow this order (mmdetection's cat2label).
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)

# (category id, name) of the generated ``coco_shapes``; ids deliberately not contiguous.
SHAPES_CATEGORIES = ((2, "circle"), (5, "triangle"), (9, "rectangle"), (14, "star"))


def required_paths() -> list[str]:
  """The annotation files and image directories (with a trailing /) a COCO root must hold."""
  return [path for image_dir, annotation_file in SPLITS.values()
          for path in (annotation_file, image_dir + "/")]


def missing_paths(root: str) -> list[str]:
  """The required paths (``required_paths``) that ``root`` lacks."""
  missing = []
  for image_dir, annotation_file in SPLITS.values():
    if not os.path.isfile(os.path.join(root, annotation_file)):
      missing.append(annotation_file)
    if not os.path.isdir(os.path.join(root, image_dir)):
      missing.append(image_dir + "/")
  return missing


def fingerprint(root: str) -> dict:
  """What the prepared records were made from, cheaply: the size of each annotation file, and per
  image directory its number of files and a digest of their names and sizes (a repaired or
  replaced image changes it; copying or moving the directory does not)."""
  found = {}
  for image_dir, annotation_file in SPLITS.values():
    found[annotation_file] = os.path.getsize(os.path.join(root, annotation_file))
    entries = sorted((entry.name, entry.stat().st_size)
                     for entry in os.scandir(os.path.join(root, image_dir)) if entry.is_file())
    digest = hashlib.sha256("".join(f"{name}:{size}\n" for name, size in entries).encode())
    found[image_dir + "/"] = f"{len(entries)} files, {digest.hexdigest()[:16]}"
  return found


def changes(recorded: dict, root: str) -> list[str]:
  """The paths of `root` whose fingerprint differs from `recorded` (a `fingerprint`)."""
  now = fingerprint(root)
  return [path for path in now if path in recorded and recorded[path] != now[path]]


def degenerate(bbox_xywh, area) -> np.ndarray:
  """mmdetection v1's rule for dropping annotations (``_parse_ann_info``): ``area <= 0 or w < 1
  or h < 1``. ``bbox_xywh`` (..., 4) and ``area`` (...) as in the annotation file; bool (...)."""
  bbox_xywh = np.asarray(bbox_xywh, np.float64).reshape(-1, 4)
  return (np.asarray(area, np.float64).reshape(-1) <= 0) | (bbox_xywh[:, 2] < 1) | (
      bbox_xywh[:, 3] < 1)
