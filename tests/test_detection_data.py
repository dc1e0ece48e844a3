"""COCO data: the real coco_instances builder on generated COCO-layout directories, the detection
input pipeline (transform, canvases, determinism, resume, process shares, exact-once eval)."""

import collections
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
from pycocotools import mask as mask_utils
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from lct_flax.datasets import coco_checks
from lct_flax.datasets import coco_instances
from lct_flax.datasets import coco_layout
from lct_flax.datasets import coco_shapes
from lct_flax.detection import data
from lct_flax.detection import data_config
from lct_flax.detection.data_config import DetectionDataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _annotation_file(layout, split):
  with open(os.path.join(layout.root, coco_layout.SPLITS[split][1])) as f:
    return json.load(f)


def _by_id(items):
  return sorted(items, key=lambda item: item["id"])


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(expected, actual):
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# The generated dataset and the builder.


def test_generated_annotations_are_what_pycocotools_expects(coco_shapes_layout):
  dataset = _annotation_file(coco_shapes_layout, "train")
  images = {image["id"]: image for image in dataset["images"]}
  category_ids = sorted(c["id"] for c in dataset["categories"])
  assert category_ids == [2, 5, 9, 14]  # not contiguous, like COCO's
  kinds = collections.Counter()
  for a in dataset["annotations"]:
    image = images[a["image_id"]]
    if a["iscrowd"]:
      rle = mask_utils.frPyObjects(a["segmentation"], image["height"], image["width"])
      kinds["crowd"] += 1
    else:
      rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], image["height"],
                                                    image["width"]))
      polygon = np.reshape(a["segmentation"][0], (-1, 2))
      np.testing.assert_allclose(a["bbox"], [*polygon.min(0), *np.ptp(polygon, axis=0)],
                                 atol=0.011)
      kinds["polygon"] += 1
    assert a["area"] == float(mask_utils.area(rle))
    if a["iscrowd"]:
      np.testing.assert_allclose(a["bbox"], mask_utils.toBbox(rle))
  assert kinds["crowd"] >= 3 and kinds["polygon"] >= 30
  shapes = {(image["height"] > image["width"], image["height"] == image["width"])
            for image in images.values()}
  assert {(False, False), (True, False)} <= shapes  # landscape and portrait
  assert len({a["id"] for a in dataset["annotations"]}) == len(dataset["annotations"])


def test_generator_is_deterministic(tmp_path):
  def digest(root):
    sha = hashlib.sha256()
    for directory, _, files in sorted(os.walk(root)):
      for name in sorted(files):
        with open(os.path.join(directory, name), "rb") as f:
          sha.update(name.encode() + f.read())
    return sha.hexdigest()

  small = dict(num_train=4, num_val=2, seed=5)
  coco_shapes.write_shapes_coco(str(tmp_path / "a"), **small)
  coco_shapes.write_shapes_coco(str(tmp_path / "b"), **small)
  coco_shapes.write_shapes_coco(str(tmp_path / "c"), **{**small, "seed": 6})
  assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_builder_keeps_images_and_annotations_exactly(shapes_config, coco_shapes_layout, split):
  original = _annotation_file(coco_shapes_layout, split)
  builder = tfds.builder(shapes_config.name, data_dir=shapes_config.data_dir)
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  images = sorted(original["images"], key=lambda image: image["id"])
  annotations = collections.defaultdict(list)
  for a in original["annotations"]:
    annotations[a["image_id"]].append(a)
  label = {category: i for i, category in enumerate(sorted(c["id"] for c in
                                                           original["categories"]))}
  assert len(source) == len(images)
  image_dir = coco_layout.SPLITS[split][0]
  for record, image in zip(source, images):  # ascending image ids
    assert record["image/id"] == image["id"]
    assert record["image/filename"].decode() == image["file_name"]
    assert (record["image/height"], record["image/width"]) == (image["height"], image["width"])
    with open(os.path.join(coco_shapes_layout.root, image_dir, image["file_name"]), "rb") as f:
      assert record["image"] == f.read()
    objects = record["objects"]
    expected = annotations[image["id"]]
    assert [int(i) for i in objects["id"]] == [a["id"] for a in expected]  # the file's order
    for n, a in enumerate(expected):
      assert objects["category_id"][n] == a["category_id"]
      assert objects["label"][n] == label[a["category_id"]]
      assert objects["bbox"][n].tolist() == a["bbox"]  # float64, bit for bit
      assert float(objects["area"][n]) == a["area"]
      assert bool(objects["iscrowd"][n]) == bool(a["iscrowd"])
      assert json.loads(objects["segmentation"][n]) == a["segmentation"]
  # The index the pipeline plans with is in record order and counts what mmdetection keeps.
  index = builder.info.metadata[split]
  assert index["image_id"] == [image["id"] for image in images]
  for n, image in enumerate(images):
    anns = annotations[image["id"]]
    dropped = [a["area"] <= 0 or a["bbox"][2] < 1 or a["bbox"][3] < 1 for a in anns]
    assert index["num_degenerate"][n] == sum(dropped)
    assert index["num_crowd"][n] == sum(a["iscrowd"] and not d for a, d in zip(anns, dropped))
    assert index["num_boxes"][n] == sum(not a["iscrowd"] and not d
                                        for a, d in zip(anns, dropped))


def test_read_annotations_rebuilds_the_annotation_file(shapes_config, coco_shapes_layout):
  original = _annotation_file(coco_shapes_layout, "validation")
  rebuilt = data.read_annotations(shapes_config)
  assert _by_id(rebuilt["annotations"]) == _by_id(original["annotations"])
  assert _by_id(rebuilt["images"]) == _by_id(
      [{k: image[k] for k in ("id", "file_name", "height", "width")}
       for image in original["images"]])
  assert rebuilt["categories"] == [{"id": c["id"], "name": c["name"]}
                                   for c in original["categories"]]


def test_dataset_info(shapes_config):
  info = data.get_dataset_info(shapes_config)
  assert info == data.DetectionDatasetInfo(
      num_classes=4, category_ids=(2, 5, 9, 14),
      class_names=("circle", "triangle", "rectangle", "star"), num_train_images=24,
      num_eval_images=10)


def test_records_out_of_step_with_their_index_are_refused(shapes_config, tmp_path):
  shutil.copytree(shapes_config.data_dir, tmp_path / "data")
  builder = tfds.builder(shapes_config.name, data_dir=str(tmp_path / "data"))
  path = os.path.join(builder.data_dir, "metadata.json")
  with open(path) as f:
    metadata = json.load(f)
  ids = metadata["validation"]["image_id"]
  ids[0], ids[-1] = ids[-1], ids[0]
  with open(path, "w") as f:
    json.dump(metadata, f)
  shapes_config.data_dir = str(tmp_path / "data")
  with pytest.raises(DetectionDataError, match="do not follow its index; delete that directory"):
    data.create_eval_iterator(shapes_config, global_batch_size=2)


def _copy_layout(layout, destination, *, without=None):
  shutil.copytree(layout.root, destination)
  if without:
    path = os.path.join(destination, without)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  return str(destination)


@pytest.mark.parametrize("missing", coco_layout.required_paths())
def test_a_missing_file_or_directory_gets_one_line(coco_shapes_layout, tmp_path, missing):
  root = _copy_layout(coco_shapes_layout, tmp_path / "coco", without=missing)
  config = data_config.shapes_dataset_config(data_dir=str(tmp_path / "data"), manual_dir=root)
  with pytest.raises(coco_instances.CocoLayoutError) as error:
    data.prepare_dataset(config)
  message = str(error.value)
  assert "\n" not in message
  assert root in message and missing.rstrip("/") in message
  assert "python -m lct_flax.datasets.coco_shapes" in message


def test_coco2017_without_its_directory_says_where_to_get_it(tmp_path):
  config = data_config.default_dataset_config(data_dir=str(tmp_path / "data"),
                                              manual_dir=str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError) as error:
    data.prepare_dataset(config)
  message = str(error.value)
  assert "\n" not in message
  assert "annotations/instances_train2017.json" in message and "val2017/" in message
  assert "cocodataset.org" in message
  with pytest.raises(FileNotFoundError, match="nowhere lacks annotations.*cocodataset.org"):
    data.get_dataset_info(config)   # the same line: what is missing where, and the fix


def test_prepare_cli_reports_a_missing_directory_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "lct_flax.detection.data", "--dataset=coco_instances/2017",
       f"--data_dir={tmp_path / 'data'}", f"--manual_dir={tmp_path / 'coco'}"],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "annotations/instances_train2017.json" in errors[0]
  assert "oneDNN custom operations" not in result.stderr   # TensorFlow's import banner


def test_a_missing_image_or_foreign_categories_get_one_line(coco_shapes_layout, tmp_path):
  root = _copy_layout(coco_shapes_layout, tmp_path / "coco")
  first = _annotation_file(coco_shapes_layout, "validation")["images"][0]["file_name"]
  os.remove(os.path.join(root, "val2017", first))
  config = data_config.shapes_dataset_config(data_dir=str(tmp_path / "data"), manual_dir=root)
  with pytest.raises(coco_instances.CocoLayoutError, match=f"lacks 1 images.*{first}"):
    data.prepare_dataset(config)
  config = data_config.default_dataset_config(data_dir=str(tmp_path / "data"),
                                              manual_dir=coco_shapes_layout.root)
  with pytest.raises(coco_instances.CocoLayoutError, match="4 categories, not the config's 80"):
    data.prepare_dataset(config)


def _first_annotation(dataset, *, crowd=False):
  return next(a for a in dataset["annotations"] if bool(a["iscrowd"]) == crowd)


def _set_segmentation(dataset, segmentation):
  annotation = _first_annotation(dataset)
  annotation["segmentation"] = segmentation
  return annotation["id"]


def _bad_rle_size(dataset):
  annotation = _first_annotation(dataset, crowd=True)
  annotation["segmentation"]["size"] = [1, 1]
  return annotation["id"]


def _bad_field(dataset, field, value):
  annotation = dataset["annotations"][3]
  if value is None:
    del annotation[field]
  else:
    annotation[field] = value
  return annotation["id"]


# (edit of the train annotation file returning the id it damaged, what the one line says)
BAD_ANNOTATIONS = {
    "polygon of 2 points": (lambda d: _set_segmentation(d, [[10.0, 10.0, 20.0, 10.0]]),
                            "a polygon of 2 points (fewer than 3)"),
    "odd polygon": (lambda d: _set_segmentation(d, [[10.0, 10.0, 20.0, 10.0, 20.0]]),
                    "a polygon of 5 coordinates (an odd number)"),
    "empty segmentation": (lambda d: _set_segmentation(d, []), "an empty segmentation"),
    "rle of another size": (_bad_rle_size, "an RLE of size [1, 1] on a"),
    "no area": (lambda d: _bad_field(d, "area", None), "has no 'area'"),
    "3-number bbox": (lambda d: _bad_field(d, "bbox", [1.0, 2.0, 3.0]),
                      "has 'bbox' [1.0, 2.0, 3.0], not [x, y, width, height]"),
}


@pytest.mark.parametrize("case", BAD_ANNOTATIONS)
def test_a_bad_annotation_is_refused_at_preparation_naming_its_id_and_field(
    coco_shapes_layout, tmp_path, case):
  edit, expected = BAD_ANNOTATIONS[case]
  root = _copy_layout(coco_shapes_layout, tmp_path / "coco")
  path = os.path.join(root, coco_layout.SPLITS["train"][1])
  dataset = _annotation_file(coco_shapes_layout, "train")
  bad_id = edit(dataset)
  with open(path, "w") as f:
    json.dump(dataset, f)
  config = data_config.shapes_dataset_config(data_dir=str(tmp_path / "data"), manual_dir=root)
  with pytest.raises(coco_checks.CocoAnnotationError) as error:
    data.prepare_dataset(config)
  message = str(error.value)
  assert "\n" not in message and path in message and expected in message
  assert f"annotation {bad_id}" in message
  assert not os.path.exists(tmp_path / "data" / "coco_instances" / "shapes" / "1.0.0")


@pytest.mark.parametrize("damage,expected", [
    (lambda text: text[:len(text) // 2], "is not valid JSON ("),
    (lambda text: json.dumps({**json.loads(text), "images": []}), "lists no images"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "annotations"}),
     "has no 'annotations' list")])
def test_a_damaged_annotation_file_is_refused_in_one_line_naming_it(coco_shapes_layout, tmp_path,
                                                                    damage, expected):
  root = _copy_layout(coco_shapes_layout, tmp_path / "coco")
  path = os.path.join(root, coco_layout.SPLITS["validation"][1])
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(damage(text))
  config = data_config.shapes_dataset_config(data_dir=str(tmp_path / "data"), manual_dir=root)
  with pytest.raises(coco_checks.CocoAnnotationError) as error:
    data.prepare_dataset(config)
  assert "\n" not in str(error.value) and path in str(error.value) and expected in str(error.value)


def test_images_that_do_not_decode_are_skipped_at_preparation_with_their_names(
    coco_shapes_layout, tmp_path, caplog):
  root = _copy_layout(coco_shapes_layout, tmp_path / "coco")
  images = _annotation_file(coco_shapes_layout, "train")["images"]
  truncated, not_an_image = (os.path.join(root, "train2017", images[i]["file_name"])
                             for i in (3, 5))
  with open(truncated, "r+b") as f:
    f.truncate(os.path.getsize(truncated) // 2)
  with open(not_an_image, "w") as f:
    f.write("not a JPEG")
  config = data_config.shapes_dataset_config(data_dir=str(tmp_path / "data"), manual_dir=root)
  with caplog.at_level(logging.WARNING):
    data.prepare_dataset(config)
  warning = [r.getMessage() for r in caplog.records if "do not decode" in r.getMessage()]
  assert len(warning) == 1 and "skipped 2 of 24 images" in warning[0]
  assert os.path.basename(truncated) in warning[0] and os.path.basename(not_an_image) in warning[0]
  stored = {image["id"] for image in data.read_annotations(config, "train")["images"]}
  assert stored == {image["id"] for image in images} - {images[3]["id"], images[5]["id"]}
  batches = data.create_train_iterator(config, global_batch_size=2, seed=0)
  assert all(np.all(np.isfinite(batch["boxes"])) for _, batch in zip(range(12), batches))


def test_a_prepared_dataset_whose_coco_files_changed_is_refused_in_one_line(coco_shapes_layout,
                                                                           tmp_path):
  root = _copy_layout(coco_shapes_layout, tmp_path / "coco")
  config = data_config.shapes_dataset_config(data_dir=str(tmp_path / "data"), manual_dir=root)
  data.prepare_dataset(config)
  image = os.path.join(root, "val2017", _annotation_file(coco_shapes_layout,
                                                          "validation")["images"][0]["file_name"])
  with open(image, "r+b") as f:   # repaired (or damaged) after preparation
    f.truncate(os.path.getsize(image) - 10)
  with pytest.raises(DetectionDataError) as error:
    data.prepare_dataset(config)
  message = str(error.value)
  assert "\n" not in message and "(val2017/ changed)" in message
  assert "delete " in message and "python -m lct_flax.detection.data" in message
  shutil.rmtree(os.path.join(root, "val2017"))   # the COCO files gone: nothing to compare with
  data.prepare_dataset(config)


def test_boxes_wholly_outside_their_images_are_warned_about_at_preparation(
    coco_shapes_layout, tmp_path, caplog):
  root = _copy_layout(coco_shapes_layout, tmp_path / "coco")
  path = os.path.join(root, coco_layout.SPLITS["train"][1])
  dataset = _annotation_file(coco_shapes_layout, "train")
  sizes = {image["id"]: image["width"] for image in dataset["images"]}
  moved = dataset["annotations"][2]
  moved["bbox"] = [sizes[moved["image_id"]] + 5.0, 0.0, 10.0, 10.0]   # right of the image
  with open(path, "w") as f:
    json.dump(dataset, f)
  config = data_config.shapes_dataset_config(data_dir=str(tmp_path / "data"), manual_dir=root)
  with caplog.at_level(logging.WARNING):
    data.prepare_dataset(config)
  warning = [r.getMessage() for r in caplog.records if "wholly outside" in r.getMessage()]
  assert len(warning) == 1 and path in warning[0]
  assert f"1 of {len(dataset['annotations'])} annotations" in warning[0]
  assert f"(ids {moved['id']})" in warning[0]


# ---------------------------------------------------------------------------------------------
# The transform: sizes, pixels and boxes against independent transcriptions.


def cv2_linear(image, height, width):
  """cv2.resize(INTER_LINEAR) in NumPy (float weights): half-pixel centres, edges clamped."""

  def taps(out_size, in_size):
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    low = np.floor(source).astype(int)
    frac = source - low
    frac[low < 0] = 0
    low = np.maximum(low, 0)
    frac[low >= in_size - 1] = 0
    low = np.minimum(low, in_size - 1)
    return low, np.minimum(low + 1, in_size - 1), frac

  y0, y1, fy = taps(height, image.shape[0])
  x0, x1, fx = taps(width, image.shape[1])
  pixels = image.astype(np.float64)
  rows = pixels[y0] * (1 - fy)[:, None, None] + pixels[y1] * fy[:, None, None]
  out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
  return np.floor(out + 0.5)


def mmdet_v1_boxes(annotations, factor, resized, flip):
  """mmdetection v1 ground truth of one image: non-degenerate boxes (+1 convention) scaled,
  clipped to W - 1 / H - 1, flipped x -> W - 1 - x; crowd flags and labels alongside."""
  kept = [a for a in annotations if not (a["area"] <= 0 or a["bbox"][2] < 1 or a["bbox"][3] < 1)]
  boxes = np.array([[x, y, x + w - 1, y + h - 1] for x, y, w, h in (a["bbox"] for a in kept)],
                   np.float64).reshape(-1, 4) * factor
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, resized[1] - 1)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, resized[0] - 1)
  if flip:
    boxes[:, [0, 2]] = resized[1] - 1 - boxes[:, [2, 0]]
  return boxes, np.array([bool(a["iscrowd"]) for a in kept], bool), kept


def test_train_batches_follow_the_mmdetection_transform(shapes_config, coco_shapes_layout):
  original = _annotation_file(coco_shapes_layout, "train")
  images = {image["id"]: image for image in original["images"]}
  annotations = collections.defaultdict(list)
  for a in original["annotations"]:
    annotations[a["image_id"]].append(a)
  label = {category: i for i, category in enumerate([2, 5, 9, 14])}
  canvases = {(128, 160), (160, 128)}
  flips = []
  for batch in _take(data.create_train_iterator(shapes_config, global_batch_size=4, seed=0), 6):
    assert batch["image"].dtype == np.uint8 and batch["image"].shape[0] == 4
    assert tuple(batch["image"].shape[1:3]) in canvases  # one canvas per batch
    for n in range(4):
      image = images[int(batch["image_id"][n])]
      height, width = image["height"], image["width"]
      factor = min(160 / max(height, width), 128 / min(height, width))  # mmcv, img_scale
      new_h, new_w = int(height * factor + 0.5), int(width * factor + 0.5)
      np.testing.assert_array_equal(batch["original_shape"][n], [height, width])
      np.testing.assert_array_equal(batch["image_shape"][n], [new_h, new_w])
      np.testing.assert_allclose(batch["scale"][n], [factor, factor], rtol=1e-6)
      with open(os.path.join(coco_shapes_layout.root, "train2017", image["file_name"]),
                "rb") as f:
        decoded = tf.io.decode_jpeg(f.read(), channels=3, dct_method="INTEGER_ACCURATE").numpy()
      expected = cv2_linear(decoded, new_h, new_w)
      placed = batch["image"][n, :new_h, :new_w].astype(np.float64)
      errors = [np.abs(placed - expected).max(), np.abs(placed - expected[:, ::-1]).max()]
      assert min(errors) <= 1 < max(errors)  # as resized, or mirrored
      flip = bool(np.argmin(errors))
      flips.append(flip)
      outside = np.ones(batch["image"].shape[1:3], bool)
      outside[:new_h, :new_w] = False
      assert not batch["image"][n][outside].any()  # zeros around the image
      boxes, crowd, kept = mmdet_v1_boxes(annotations[image["id"]], factor, (new_h, new_w), flip)
      count = len(kept)
      np.testing.assert_allclose(batch["boxes"][n, :count], boxes, atol=2e-3)
      np.testing.assert_array_equal(batch["crowd"][n, :count], crowd)
      np.testing.assert_array_equal(batch["valid"][n, :count], ~crowd)
      np.testing.assert_array_equal(batch["labels"][n, :count],
                                    [label[a["category_id"]] for a in kept])
      assert not batch["valid"][n, count:].any() and not batch["crowd"][n, count:].any()
      assert not batch["boxes"][n, count:].any()
  assert 0 < np.mean(flips) < 1
  assert batch["boxes"].dtype == np.float32 and batch["labels"].dtype == np.int32
  assert batch["valid"].dtype == bool and batch["crowd"].dtype == bool
  assert batch["image_id"].dtype == np.int64 and batch["scale"].dtype == np.float32
  assert batch["image_shape"].dtype == np.int32 and batch["original_shape"].dtype == np.int32


def test_torchvision_convention_and_no_flip(shapes_config):
  shapes_config.box_convention = "torchvision"
  shapes_config.flip_ratio = 0.0
  batch = next(data.create_train_iterator(shapes_config, global_batch_size=4, seed=0))
  original = batch["original_shape"].astype(np.float64)
  np.testing.assert_allclose(batch["scale"], batch["image_shape"] / original, rtol=1e-6)
  reference = next(data.create_train_iterator(
      data_config.shapes_dataset_config(data_dir=shapes_config.data_dir, flip_ratio=0.0),
      global_batch_size=4, seed=0))
  np.testing.assert_array_equal(batch["image"], reference["image"])
  # Same images, same plan; mmdetection v1's boxes [x, y, x + w - 1, y + h - 1] * s become
  # torchvision's [x, y, x + w, y + h] * (resized / original per axis) (no clipping here: the
  # shapes keep 2 px from the border).
  real = reference["valid"] | reference["crowd"]
  mmdet_scale = reference["scale"][:, None, [1, 0, 1, 0]]
  expected = (reference["boxes"] / mmdet_scale + [0, 0, 1, 1]) * batch["scale"][:, None,
                                                                                [1, 0, 1, 0]]
  np.testing.assert_allclose(batch["boxes"][real], expected[real], rtol=1e-5, atol=1e-3)
  np.testing.assert_array_equal(batch["valid"], reference["valid"])


# ---------------------------------------------------------------------------------------------
# Plans: canvases, determinism, resume, processes, skips.


def _usable_train_images(layout):
  """Ids of the train images with a box mmdetection trains on (non-crowd, w and h >= 1)."""
  return {a["image_id"] for a in _annotation_file(layout, "train")["annotations"]
          if not a["iscrowd"] and a["bbox"][2] >= 1 and a["bbox"][3] >= 1 and a["area"] > 0}


def test_an_epoch_trains_on_every_usable_image(shapes_config, coco_shapes_layout):
  usable = _usable_train_images(coco_shapes_layout)
  assert len(usable) == 24 - 2 - 1  # COCO_SHAPES: 2 empty, 1 crowd-only
  steps = data.steps_per_epoch(shapes_config, 4)
  seen = np.concatenate([b["image_id"] for b in _take(
      data.create_train_iterator(shapes_config, global_batch_size=4, seed=1), steps)])
  assert set(seen.tolist()) == usable
  assert len(seen) - len(usable) < 4 * 2  # padding repeats less than a batch per canvas


def test_same_seed_same_batches_other_seed_other_batches(shapes_config):
  def stream(seed):
    return _take(data.create_train_iterator(shapes_config, global_batch_size=4, seed=seed), 5)

  reference = stream(0)
  _assert_batches_equal(reference, stream(0))
  assert any(not np.array_equal(a["image_id"], b["image_id"])
             for a, b in zip(reference, stream(1)))


@pytest.mark.parametrize("start_step", [2, 6, 9])
def test_resuming_mid_epoch_matches_the_uninterrupted_stream(shapes_config, start_step):
  assert data.steps_per_epoch(shapes_config, 4) == 6  # 2: mid-epoch, 6: next epoch, 9: its middle
  uninterrupted = _take(data.create_train_iterator(shapes_config, global_batch_size=4, seed=7),
                        11)
  resumed = _take(data.create_train_iterator(shapes_config, global_batch_size=4, seed=7,
                                             start_step=start_step), 11 - start_step)
  _assert_batches_equal(uninterrupted[start_step:], resumed)
  bounded = list(data.create_train_iterator(shapes_config, global_batch_size=4, seed=7,
                                            start_step=start_step, stop_step=start_step + 2))
  _assert_batches_equal(uninterrupted[start_step:start_step + 2], bounded)


def test_two_processes_read_disjoint_shares_of_the_same_global_batches(shapes_config):
  single = _take(data.create_train_iterator(shapes_config, global_batch_size=4, seed=2), 6)
  shares = [_take(data.create_train_iterator(shapes_config, global_batch_size=4, seed=2,
                                             process_index=i, process_count=2), 6)
            for i in range(2)]
  for step, batch in enumerate(single):
    parts = [share[step] for share in shares]
    assert all(len(part["image_id"]) == 2 for part in parts)
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key],
                                    err_msg=key)


def test_skipped_images_and_boxes_are_warned_once_with_counts(shapes_config, caplog):
  with caplog.at_level(logging.WARNING):
    iterator = data.create_train_iterator(shapes_config, global_batch_size=4, seed=0)
  messages = [r.getMessage() for r in caplog.records if "coco_instances/shapes:train" in
              r.getMessage()]
  assert len(messages) == 3
  assert any("skipped 2 of 24 images" in m and "without annotations" in m for m in messages)
  assert any("skipped 1 of 24 images" in m and "crowd or degenerate" in m for m in messages)
  assert any("dropped 2 degenerate annotations" in m and "in 2 training images" in m
             for m in messages)
  del iterator


def test_small_images_are_skipped_in_training(shapes_config, caplog):
  shapes_config.min_image_size = 100  # drops the 96-px-high and 96-px-wide images
  with caplog.at_level(logging.WARNING):
    batches = _take(data.create_train_iterator(shapes_config, global_batch_size=2, seed=0),
                    data.steps_per_epoch(shapes_config, 2))
  assert "smaller than 100 px" in caplog.text
  assert all(min(shape) >= 100 for b in batches for shape in b["original_shape"])


def test_bad_canvases_and_instance_limits_are_refused_in_one_line(shapes_config):
  config = shapes_config.copy_and_resolve_references()
  config.canvases = ((128, 150), (160, 128))
  with pytest.raises(DetectionDataError, match=r"\(128, 150\) is not .* multiples of "
                                               r"dataset.size_divisor=32; use e.g. \(128, 160\)"):
    data.create_train_iterator(config, global_batch_size=2, seed=0)
  config.canvases = ((128, 128),)
  with pytest.raises(DetectionDataError) as error:
    data.create_train_iterator(config, global_batch_size=2, seed=0)
  assert "larger than every canvas" in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(DetectionDataError, match="larger than every canvas"):
    data.create_eval_iterator(config, global_batch_size=2)
  config = shapes_config.copy_and_resolve_references()
  config.max_instances = 2
  with pytest.raises(DetectionDataError, match="more than dataset.max_instances=2.*set "
                                               "dataset.max_instances="):
    data.create_train_iterator(config, global_batch_size=2, seed=0)


# ---------------------------------------------------------------------------------------------
# Evaluation batches.


def test_eval_covers_every_image_once_across_two_processes(shapes_config, coco_shapes_layout):
  expected = sorted(image["id"] for image in
                    _annotation_file(coco_shapes_layout, "validation")["images"])
  per_process = [list(data.create_eval_iterator(shapes_config, global_batch_size=4,
                                                process_index=i, process_count=2))
                 for i in range(2)]
  num_batches = data.num_eval_batches(shapes_config, 4, process_count=2)
  assert [len(batches) for batches in per_process] == [num_batches] * 2
  seen = []
  for batches in per_process:
    for batch in batches:
      assert batch["image"].shape[0] == 2 and tuple(batch["image"].shape[1:3]) in {
          (128, 160), (160, 128)}
      seen += batch["image_id"][batch["mask"]].tolist()
      padding = ~batch["mask"]
      assert (batch["image_id"][padding] == -1).all() and not batch["image"][padding].any()
  assert sorted(seen) == expected
  single = list(data.create_eval_iterator(shapes_config, global_batch_size=4, process_count=1))
  assert sorted(np.concatenate([b["image_id"][b["mask"]] for b in single]).tolist()) == expected
  assert set(single[0]) == {"image", "image_shape", "image_id", "scale", "original_shape",
                            "mask"}
