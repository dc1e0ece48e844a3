"""The detection input pipeline: ``coco_instances`` records -> host-local numpy batches.

Transform (the paper's, mmdetection v1's ``faster_rcnn_r101_fpn_1x.py``): decode, resize keeping
the aspect ratio to fit ``img_scale`` (mmcv's rule, ``transforms.rescale_size``) with bilinear
interpolation (half-pixel centres, no antialiasing, rounded to uint8: cv2's ``INTER_LINEAR``, which
mmcv uses), horizontal flip with probability ``flip_ratio`` (train), then the image goes to the
top-left corner of its canvas, zeros elsewhere. Mean/std are applied on the device: batches carry
uint8. Boxes follow ``transforms`` (``dataset.box_convention``).

Batches (numpy, one canvas per batch; ``M = dataset.max_instances``)::

  image          uint8   (B, Hc, Wc, 3)  resized (and flipped) image at the top-left, zeros around
  image_shape    int32   (B, 2)          (h, w) of the resized image
  image_id       int64   (B,)            original COCO image id (-1 on eval padding)
  scale          float32 (B, 2)          (y, x) factors original -> resized boxes (see
                                         ``transforms.box_scale``; results divide by them)
  original_shape int32   (B, 2)          (h, w) of the original image
  train only:
  boxes          float32 (B, M, 4)       xyxy in resized-image pixels, after the flip
  labels         int32   (B, M)          0..K-1
  valid          bool    (B, M)          real non-crowd instance
  crowd          bool    (B, M)          real crowd instance (box kept; ignored in matching)
  masks          uint8   (B, M, Hc, Wc/8) with ``with_masks`` (Mask R-CNN): each non-crowd
                                         instance's mask on the canvas, bit-packed along the
                                         width (``segmentation.canvas_masks``; 17.2 MB per
                                         800x1344 image at M = 128)
  eval only:
  mask           bool    (B,)            real image (False on padding slots)

Reading: the records are ArrayRecord files read by index (``tfds`` data sources). The order of
each epoch is a NumPy plan (``sampler``) computed from the split index stored with the dataset,
so batches are grouped by canvas exactly as mmdetection's GroupSampler groups them, resuming at
any ``start_step`` costs nothing, and each process reads only its own slots. The records of the
coming steps are read in order and their images decoded and resized on a thread pool (one traced
TensorFlow function per image), a few steps ahead. Same seed, same batches.

Training skips what mmdetection v1 skips, with one warning line per kind giving the count: images
without annotations and images smaller than ``min_image_size`` (``CocoDataset._filter_imgs``),
images left with no box after dropping crowd and degenerate annotations (``LoadAnnotations``), and
degenerate annotations (``area <= 0`` or w or h < 1 px). Evaluation reads every image.

Prepare a dataset once (offline, from the COCO directory layout)::

  python -m lct_flax.detection.data --dataset=coco_instances/2017 --manual_dir=COCO --data_dir=DATA
"""

from __future__ import annotations

import collections
from concurrent import futures
import dataclasses
import functools
import json
import os
import weakref

from lct_flax import quiet_tensorflow

if __name__ == "__main__":   # run as a command: TensorFlow's import banners kept off the console
  quiet_tensorflow.install()

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lct_flax import input_pipeline  # also keeps TensorFlow off the accelerators
from lct_flax import parallel
from lct_flax import tfds_preparation
from lct_flax.datasets import coco_instances
from lct_flax.datasets import coco_layout
from lct_flax.detection import data_config
from lct_flax.detection import sampler
from lct_flax.detection import segmentation
from lct_flax.detection import transforms
from lct_flax.detection.data_config import DetectionDataError

_UNDECODED_IMAGE = {"image": tfds.decode.SkipDecoding()}


@dataclasses.dataclass(frozen=True)
class DetectionDatasetInfo:
  """What a detection trainer needs to know of a prepared dataset.

  ``category_ids[label]`` is the original category id of contiguous label ``label``.
  """

  num_classes: int
  category_ids: tuple
  class_names: tuple
  num_train_images: int
  num_eval_images: int


# ---------------------------------------------------------------------------------------------
# Builders, preparation and the split index.


def _source(settings) -> tfds_preparation.Source:
  """How `tfds_preparation` finds and prepares the dataset: from the COCO layout, offline."""

  def command(manual_dir):
    line = f"python -m lct_flax.detection.data --dataset={settings.name} --manual_dir={manual_dir}"
    return line + (f" --data_dir={settings.data_dir}" if settings.data_dir else "")

  def missing(manual_dir):
    paths = coco_layout.missing_paths(manual_dir)
    return coco_instances.layout_error(settings.name.split("/")[1], manual_dir,
                                       paths) if paths else None

  def stale(builder, manual_dir):
    recorded = builder.info.metadata.get(coco_instances.SOURCE_KEY)
    if not recorded or coco_layout.missing_paths(manual_dir):
      return None   # prepared before fingerprints, or the COCO files are gone: nothing to compare
    changed = coco_layout.changes(recorded, manual_dir)
    if not changed:
      return None
    return DetectionDataError(
        f"{settings.name} in {builder.data_dir} was prepared from other files than "
        f"{manual_dir} holds now ({' and '.join(changed)} changed); delete {builder.data_dir} "
        f"and run `{command(manual_dir)}` to prepare it again, or point dataset.manual_dir at "
        f"the files it was prepared from.")

  return tfds_preparation.Source(
      name=settings.name, data_dir=settings.data_dir, manual_dir=settings.manual_dir,
      command=command, error=DetectionDataError, missing=missing, stale=stale,
      unknown="use coco_instances/2017 (or coco_instances/shapes, the generated one)")


def prepare_dataset(dataset_config) -> None:
  """Prepares the dataset once from the COCO layout in ``dataset.manual_dir`` (offline).

  A no-op when already prepared. A missing annotation file or image directory raises
  ``coco_instances.CocoLayoutError`` (a FileNotFoundError) naming them and the fix; nothing is
  downloaded. Run it on one process (or before launching) when processes share ``data_dir``.
  """
  tfds_preparation.prepare(_source(data_config.settings(dataset_config)))


def _prepared_builder(settings):
  return tfds_preparation.prepared_builder(_source(settings))


def _split_index(builder, split):
  """The split's index (``coco_instances.INDEX_FIELDS`` -> int64 array, in record order)."""
  if split not in builder.info.splits:
    raise DetectionDataError(f"{builder.info.full_name} has no split {split!r}; its splits are "
                             f"{sorted(builder.info.splits)}.")
  index = builder.info.metadata[split]
  return {field: np.asarray(index[field], np.int64) for field in coco_instances.INDEX_FIELDS}


def _records(builder, split, index):
  """The split's records, read by position; checked to be in the order of the split index."""
  source = builder.as_data_source(split, decoders=_UNDECODED_IMAGE)
  ends = (0, len(source) - 1) if len(source) else ()
  if len(source) != len(index["image_id"]) or any(
      source[i]["image/id"] != index["image_id"][i] for i in ends):
    raise DetectionDataError(f"the records of {builder.info.full_name}:{split} in "
                             f"{builder.data_dir} do not follow its index; delete that directory "
                             f"and prepare the dataset again.")
  return source


def get_dataset_info(dataset_config) -> DetectionDatasetInfo:
  """Classes, original category ids and split sizes of the prepared dataset."""
  settings = data_config.settings(dataset_config)
  builder = _prepared_builder(settings)
  config = builder.builder_config
  return DetectionDatasetInfo(
      num_classes=len(config.categories),
      category_ids=tuple(category for category, _ in config.categories),
      class_names=tuple(name for _, name in config.categories),
      num_train_images=builder.info.splits[settings.train_split].num_examples,
      num_eval_images=builder.info.splits[settings.eval_split].num_examples)


# ---------------------------------------------------------------------------------------------
# Which images, at which size, on which canvas.


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Per planned image: its record, resized (h, w), box scale (y, x) and canvas index."""

  records: np.ndarray
  resized: np.ndarray
  scale: np.ndarray
  canvas: np.ndarray


def _layout(index, records, settings, description):
  """Resized sizes and canvases of ``records``; an image that fits no canvas is refused."""
  resized, scale, canvas = [], [], []
  for record in records:
    height, width = int(index["height"][record]), int(index["width"][record])
    new_h, new_w, factor = transforms.rescale_size(height, width, settings.img_scale)
    choice = transforms.choose_canvas(height, width, (new_h, new_w), settings.canvases)
    if choice is None:
      needed = tuple(-(-side // settings.size_divisor) * settings.size_divisor
                     for side in (new_h, new_w))
      raise DetectionDataError(
          f"{description}: image {index['image_id'][record]} ({height}x{width}) resizes to "
          f"{new_h}x{new_w} for dataset.img_scale={settings.img_scale}, larger than every "
          f"canvas in dataset.canvases={settings.canvases}; add a canvas of at least {needed}.")
    resized.append((new_h, new_w))
    scale.append(transforms.box_scale(height, width, (new_h, new_w), factor,
                                      settings.box_convention))
    canvas.append(choice)
  return _Layout(np.asarray(records, np.int64), np.asarray(resized, np.int32).reshape(-1, 2),
                 np.asarray(scale, np.float32).reshape(-1, 2), np.asarray(canvas, np.int64))


def _train_records(index, settings, description, warn):
  """Records mmdetection v1 trains on (see the module docstring), warning once per kind."""
  no_annotations = index["num_annotations"] == 0
  too_small = ~no_annotations & (np.minimum(index["height"], index["width"]) <
                                 settings.min_image_size)
  no_boxes = ~no_annotations & ~too_small & (index["num_boxes"] == 0)
  keep = ~(no_annotations | too_small | no_boxes)
  with_degenerate = keep & (index["num_degenerate"] > 0)
  if warn:
    total = len(keep)
    for count, what in (
        (no_annotations.sum(), "images without annotations"),
        (too_small.sum(), f"images smaller than {settings.min_image_size} px "
                          f"(dataset.min_image_size)"),
        (no_boxes.sum(), "images whose annotations are all crowd or degenerate (no box)")):
      if count:
        logging.warning("%s: skipped %d of %d images in training: %s, as mmdetection does.",
                        description, count, total, what)
    if with_degenerate.any():
      logging.warning("%s: dropped %d degenerate annotations (area <= 0 or w or h < 1 px) in "
                      "%d training images, as mmdetection does.", description,
                      index["num_degenerate"][with_degenerate].sum(), with_degenerate.sum())
  instances = index["num_boxes"] + index["num_crowd"]
  crowded = np.flatnonzero(keep & (instances > settings.max_instances))
  if len(crowded):
    worst = crowded[np.argmax(instances[crowded])]
    raise DetectionDataError(
        f"{description}: image {index['image_id'][worst]} has {instances[worst]} instances, "
        f"more than dataset.max_instances={settings.max_instances} ({len(crowded)} such "
        f"images); set dataset.max_instances={instances[keep].max()}.")
  if not keep.any():
    raise DetectionDataError(f"{description}: no image has a box to train on.")
  return np.flatnonzero(keep)


def _train_layout(index, settings, warn=False):
  description = f"{settings.name}:{settings.train_split}"
  return _layout(index, _train_records(index, settings, description, warn), settings,
                 description)


def _eval_layout(index, settings):
  return _layout(index, np.arange(len(index["image_id"])), settings,
                 f"{settings.name}:{settings.eval_split}")


def steps_per_epoch(dataset_config, global_batch_size: int) -> int:
  """Train steps per epoch (the same on every process; independent of the process count)."""
  settings = data_config.settings(dataset_config)
  parallel.local_batch_size(global_batch_size, 1, error=DetectionDataError)
  layout = _train_layout(_split_index(_prepared_builder(settings), settings.train_split),
                         settings)
  return sampler.steps_per_epoch(layout.canvas, len(settings.canvases), global_batch_size)


def num_eval_batches(dataset_config, global_batch_size: int, process_count=None) -> int:
  """Batches ``create_eval_iterator`` yields on every process."""
  settings = data_config.settings(dataset_config)
  _, process_count = parallel.process_of(None, process_count, error=DetectionDataError)
  parallel.local_batch_size(global_batch_size, process_count, error=DetectionDataError)
  layout = _eval_layout(_split_index(_prepared_builder(settings), settings.eval_split),
                        settings)
  return sampler.steps_per_epoch(layout.canvas, len(settings.canvases), global_batch_size)


# ---------------------------------------------------------------------------------------------
# Images: pure TensorFlow functions.


def decode(image_bytes):
  """uint8 RGB (h, w, 3); JPEGs with libjpeg's accurate integer DCT (as cv2.imread decodes)."""
  return tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8,
                                 expand_animations=False))


def resize_bilinear(image, size):
  """uint8 image -> uint8 ``size`` (h, w): cv2.resize INTER_LINEAR (mmcv.imresize 'bilinear').

  Half-pixel centres, edge pixels repeated, no antialiasing, rounded half up (values stay within
  0..255, so the cast of ``x + 0.5`` rounds); cv2 differs by at most 1 level (its 11-bit
  fixed-point weights).
  """
  resized = tf.image.resize(image, size, method="bilinear", antialias=False)
  return tf.cast(resized + 0.5, tf.uint8)


def image_on_canvas(image_bytes, image_shape, flip, canvas):
  """Decoded, resized to ``image_shape``, flipped if ``flip``, at the top-left of ``canvas``."""
  image = resize_bilinear(decode(image_bytes), image_shape)
  image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  padding = [[0, canvas[0] - image_shape[0]], [0, canvas[1] - image_shape[1]], [0, 0]]
  return tf.pad(image, padding)


# ---------------------------------------------------------------------------------------------
# Iterators: a NumPy plan says which images each step holds; the process reads their records in
# step order and decodes them onto their canvases on a thread pool, ahead of use, in order.

# Each image runs through one traced TensorFlow function (decode, resize, flip, pad; graph-mode
# code, so without AutoGraph's rewriting); TensorFlow releases the GIL while it runs, so the
# pool's threads work in parallel.
_image_on_canvas = tf.function(image_on_canvas, autograph=False, input_signature=[
    tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.bool),
    tf.TensorSpec([2], tf.int32)])
_THREADS = os.cpu_count() or 1


def _place(row):
  """A planned image's row with ``image`` decoded onto its canvas (zeros for eval padding), and
  its instance masks rasterised there when the row carries their ``segmentations``."""
  row = dict(row)
  canvas, flip = row.pop("canvas"), row.pop("flip")
  segmentations = row.pop("segmentations", None)
  if row.get("mask", True):
    row["image"] = _image_on_canvas(row["image"], row["image_shape"], flip, canvas).numpy()
  else:
    row["image"] = np.zeros((*canvas, 3), np.uint8)
  if segmentations is not None:
    row["masks"] = segmentation.canvas_masks(
        segmentations, row["crowd"], original_shape=row["original_shape"],
        resized_shape=row["image_shape"], flip=bool(flip), canvas=canvas,
        max_instances=len(row["valid"]))
  return row


class _Batches:
  """Iterator of numpy batches: ``read_step(step)`` gives a step's rows (records read, boxes
  transformed); their images are decoded on a thread pool a few steps ahead, in order."""

  def __init__(self, read_step, steps, local_batch):
    self._read_step = read_step
    self._steps = iter(steps)
    self._pool = futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="detection_images")
    weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
    self._pending = collections.deque()
    for _ in range(2 + -(-_THREADS // local_batch)):  # Enough images in flight for every thread.
      self._submit()

  def _submit(self):
    step = next(self._steps, None)
    if step is not None:
      self._pending.append([self._pool.submit(_place, row) for row in self._read_step(step)])

  def __iter__(self):
    return self

  def __next__(self):
    if not self._pending:
      raise StopIteration
    rows = [image.result() for image in self._pending.popleft()]
    self._submit()
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def _image_fields(layout, position, index):
  record = layout.records[position]
  return {
      "image_shape": layout.resized[position],
      "image_id": np.int64(index["image_id"][record]),
      "scale": layout.scale[position],
      "original_shape": np.array([index["height"][record], index["width"][record]], np.int32),
  }


def _train_row(record, fields, canvas, flip, settings, with_masks: bool) -> dict:
  """One training image's row: its record's image and instances, resized and flipped as
  `fields` and `flip` say (and its kept segmentations `with_masks`)."""
  objects = record["objects"]
  row = {"image": record["image"], "canvas": canvas, "flip": flip, **fields,
         **transforms.image_instances(
             objects, scale_yx=fields["scale"], resized=fields["image_shape"], flip=bool(flip),
             convention=settings.box_convention, max_instances=settings.max_instances)}
  if with_masks:
    kept = np.flatnonzero(transforms.kept_annotations(objects))
    row["segmentations"] = [objects["segmentation"][i] for i in kept]
  return row


def create_train_iterator(dataset_config, *, global_batch_size: int, seed: int,
                          start_step: int = 0, stop_step: int | None = None,
                          process_index=None, process_count=None, with_masks: bool = False):
  """Host-local train batches of the steps from ``start_step`` up to ``stop_step`` (endless
  when None; numpy; fields in the module docstring; ``masks`` with ``with_masks``, as
  mmdetection's LoadAnnotations(with_mask=True)).

  ``B = global_batch_size // process_count`` images per batch, all on one canvas; epoch ``e``
  is ``sampler.train_plan(..., seed=seed, epoch=e)``, and every process has
  ``steps_per_epoch(...)`` steps per epoch. Starting at ``start_step`` yields exactly what the
  uninterrupted stream yields from that step on. Warns once per kind of skipped training image.
  """
  settings = data_config.settings(dataset_config)
  process_index, process_count = parallel.process_of(process_index, process_count,
                                                     error=DetectionDataError)
  local_batch = parallel.local_batch_size(global_batch_size, process_count,
                                          error=DetectionDataError)
  if seed < 0 or start_step < 0:
    raise DetectionDataError(f"seed ({seed}) and start_step ({start_step}) must be "
                             f"non-negative.")
  builder = _prepared_builder(settings)
  index = _split_index(builder, settings.train_split)
  layout = _train_layout(index, settings, warn=True)
  num_canvases = len(settings.canvases)
  num_steps = sampler.steps_per_epoch(layout.canvas, num_canvases, global_batch_size)
  source = _records(builder, settings.train_split, index)

  @functools.lru_cache(maxsize=2)
  def plan(epoch):
    return sampler.train_plan(layout.canvas, num_canvases, global_batch_size, seed=seed,
                              epoch=epoch, flip_ratio=settings.flip_ratio,
                              ).process_share(process_index, process_count)

  def read_step(step):
    epoch, batch = divmod(step, num_steps)
    epoch_plan = plan(epoch)
    canvas = np.asarray(settings.canvases[epoch_plan.canvas[batch]], np.int32)
    return [_train_row(source[int(layout.records[position])], _image_fields(
        layout, position, index), canvas, flip, settings, with_masks)
            for position, flip in zip(epoch_plan.images[batch], epoch_plan.flip[batch])]

  logging.info("%s:%s train stream from step %d (%d steps per epoch, local batch %d).",
               settings.name, settings.train_split, start_step, num_steps, local_batch)
  return _Batches(read_step, input_pipeline.train_steps(start_step, stop_step), local_batch)


def create_eval_iterator(dataset_config, *, global_batch_size: int, process_index=None,
                         process_count=None):
  """One pass over this process's share of the eval split (numpy; fields in the module doc).

  Across processes every image of the split appears exactly once with ``mask`` True; padding
  slots (the last batch of each canvas group) have ``mask`` False, ``image_id`` -1 and zeros.
  Every process yields ``num_eval_batches(...)`` batches, each on one canvas.
  """
  settings = data_config.settings(dataset_config)
  process_index, process_count = parallel.process_of(process_index, process_count,
                                                     error=DetectionDataError)
  local_batch = parallel.local_batch_size(global_batch_size, process_count,
                                          error=DetectionDataError)
  builder = _prepared_builder(settings)
  index = _split_index(builder, settings.eval_split)
  layout = _eval_layout(index, settings)
  plan = sampler.eval_plan(layout.canvas, len(settings.canvases), global_batch_size
                           ).process_share(process_index, process_count)
  source = _records(builder, settings.eval_split, index)
  blank = {"image": b"", "image_shape": np.zeros(2, np.int32), "image_id": np.int64(-1),
           "scale": np.ones(2, np.float32), "original_shape": np.zeros(2, np.int32),
           "flip": False, "mask": False}

  def read_step(step):
    canvas = np.asarray(settings.canvases[plan.canvas[step]], np.int32)
    rows = []
    for position in plan.images[step]:
      if position == sampler.PADDING:
        rows.append({**blank, "canvas": canvas})
      else:
        record = source[int(layout.records[position])]
        rows.append({"image": record["image"], "canvas": canvas, "flip": False, "mask": True,
                     **_image_fields(layout, position, index)})
    return rows

  return _Batches(read_step, range(len(plan.canvas)), local_batch)


def read_annotations(dataset_config, split=None) -> dict:
  """The split's annotations as a COCO-format dict, rebuilt from the records (images undecoded).

  ``images``, ``annotations`` (ids, category ids, ``bbox``, ``area``, ``iscrowd``,
  ``segmentation``, all as in the original file) and ``categories``: what pycocotools' ``COCO``
  reads from ``instances_*.json``, for the images and categories of the dataset. ``split``
  defaults to ``dataset.eval_split``.
  """
  settings = data_config.settings(dataset_config)
  builder = _prepared_builder(settings)
  split = split or settings.eval_split
  source = _records(builder, split, _split_index(builder, split))
  images, annotations = [], []
  for i in range(len(source)):
    record = source[i]
    image_id = int(record["image/id"])
    images.append({"id": image_id, "file_name": record["image/filename"].decode(),
                   "height": int(record["image/height"]), "width": int(record["image/width"])})
    objects = record["objects"]
    for n in range(len(objects["id"])):
      annotations.append({
          "id": int(objects["id"][n]), "image_id": image_id,
          "category_id": int(objects["category_id"][n]),
          "bbox": [float(v) for v in objects["bbox"][n]], "area": float(objects["area"][n]),
          "iscrowd": int(objects["iscrowd"][n]),
          "segmentation": json.loads(objects["segmentation"][n])})
  categories = [{"id": category, "name": name}
                for category, name in builder.builder_config.categories]
  return {"images": images, "annotations": annotations, "categories": categories}


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  config = data_config.default_dataset_config(values.dataset, data_dir=values.data_dir,
                                              manual_dir=values.manual_dir)
  prepare_dataset(config)
  info = get_dataset_info(config)
  builder = _prepared_builder(data_config.settings(config))
  index = _split_index(builder, "train")
  print(f"{config.name} ready in {builder.data_dir}: {info.num_train_images} train and "
        f"{info.num_eval_images} validation images, {info.num_classes} classes; "
        f"{int((index['num_annotations'] == 0).sum())} train images without annotations; at most "
        f"{int((index['num_boxes'] + index['num_crowd']).max())} instances per train image "
        f"(dataset.max_instances must be at least that).")


if __name__ == "__main__":
  from lct_flax import cli

  flags.DEFINE_string("dataset", "coco_instances/2017",
                      "coco_instances/2017 or coco_instances/shapes.")
  flags.DEFINE_string("data_dir", None, "tfds data directory (default: tfds' default).")
  flags.DEFINE_string("manual_dir", None,
                      "The COCO directory: annotations/instances_{train,val}2017.json, "
                      "train2017/, val2017/ (default: <data_dir>/downloads/manual).")
  cli.run(_main)
