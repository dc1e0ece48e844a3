"""Detection input throughput on COCO-sized JPEGs, through the real coco_instances builder.

Writes the generated shapes dataset at COCO's image sizes (375-640 px sides) in the COCO layout,
prepares it with ``coco_instances/shapes`` (ArrayRecord, what the pipeline reads) and once more
as TFRecord (what ``tfds.as_dataset`` would read), then times, at the paper's scale
(img_scale 1333x800, canvases (800, 1344) / (1344, 800)):

* record reads: random access through the tfds data source (the pipeline's way: any step, any
  order) against a sequential ``as_dataset`` pass over the TFRecord copy (the tf.data way);
* planning at COCO train2017's size (118,287 images): sizes, canvases and one epoch's plan;
* first batch at step 0 and at step 10**6 (resuming is planning, not replaying);
* train and eval batches per second, and per image: decode, resize + flip + pad.

Prints a markdown section (date, CPU, cores, command, table) for bench/RESULTS.md:

  python -m bench.detection_input      (from the repository root)
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lct_flax.datasets import coco_shapes
from lct_flax.detection import data
from lct_flax.detection import data_config
from lct_flax.detection import sampler
from lct_flax.detection import transforms
from bench import machine

_TRAIN = flags.DEFINE_integer("train", 48, "Training images written.")
_VAL = flags.DEFINE_integer("val", 48, "Validation images written.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Global (= local) batch size.")
_BATCHES = flags.DEFINE_integer("batches", 24, "Timed train batches.")
_COCO_SIZES = ((480, 640), (640, 480), (427, 640), (640, 427), (375, 500), (500, 375))
_COCO_TRAIN_IMAGES = 118_287
_READ_PASSES = 20  # over the train records, so that start-up costs do not count


def _timed(fn, repeats=1, clock=time.perf_counter):
  start = clock()
  for _ in range(repeats):
    result = fn()
  return (clock() - start) / repeats, result


def _images_per_second(batches, count):
  """(images/s, CPU ms per image) over ``count`` batches after one untimed batch; real images
  only (eval ``mask``). CPU time is this process's, all threads."""
  next(batches)
  wall, cpu, images = time.perf_counter(), time.process_time(), 0
  for _, batch in zip(range(count), batches):
    images += int(batch["mask"].sum()) if "mask" in batch else len(batch["image_id"])
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return images / wall, 1000 * cpu / images


def _record_reads(config, root, tmp):
  """Records/s: data source in a random order vs tfds.as_dataset over a TFRecord copy (images
  left encoded in both)."""
  builder = tfds.builder(config.name, data_dir=config.data_dir)
  source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  order = np.random.default_rng(0).integers(len(source), size=_READ_PASSES * len(source))
  seconds, _ = _timed(lambda: [source[int(i)] for i in order])
  random_access = len(order) / seconds
  tfrecord = tfds.builder(config.name, data_dir=os.path.join(tmp, "tfrecord"),
                          file_format="tfrecord")
  tfrecord.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
  dataset = tfrecord.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
  dataset = dataset.repeat(_READ_PASSES)
  seconds, _ = _timed(lambda: sum(1 for _ in dataset.as_numpy_iterator()))
  return random_access, len(order) / seconds


def _planning_at_coco_scale(settings):
  """Seconds to lay out (sizes, canvases) and plan one epoch of a COCO-sized train split."""
  rng = np.random.default_rng(0)
  sizes = np.array(_COCO_SIZES)[rng.integers(len(_COCO_SIZES), size=_COCO_TRAIN_IMAGES)]
  index = {"image_id": np.arange(_COCO_TRAIN_IMAGES), "height": sizes[:, 0],
           "width": sizes[:, 1]}
  records = np.arange(_COCO_TRAIN_IMAGES)
  layout = data._layout  # pylint: disable=protected-access
  layout_s, layout = _timed(lambda: layout(index, records, settings, "bench"))
  plan_s, _ = _timed(lambda: sampler.train_plan(layout.canvas, 2, 16, seed=0, epoch=3,
                                                flip_ratio=0.5))
  return layout_s, plan_s


def _per_image_ms(config, count=8, repeats=5):
  """Mean CPU ms per image (``count`` train images, one at a time): decode; resize + flip + pad.

  CPU time (this process, all threads) rather than wall time: other jobs on the machine hardly
  change it."""
  builder = tfds.builder(config.name, data_dir=config.data_dir)
  source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  decode = tf.function(data.decode)
  place = tf.function(data.image_on_canvas)
  decode_s, place_s = [], []
  for i in range(count):
    image = source[i]["image"]
    height, width = decode(image).shape[:2]
    resized = tf.constant(transforms.rescale_size(height, width, (1333, 800))[:2], tf.int32)
    canvas = tf.constant((800, 1344) if width > height else (1344, 800), tf.int32)
    flip = tf.constant(True)
    args = (image, resized, flip, canvas)
    place(*args)
    decode_s.append(_timed(lambda args=args: decode(args[0]).numpy(), repeats,
                           time.process_time)[0])
    place_s.append(_timed(lambda args=args: place(*args).numpy(), repeats, time.process_time)[0])
  return 1000 * np.mean(decode_s), 1000 * (np.mean(place_s) - np.mean(decode_s))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tmp = tempfile.mkdtemp(prefix="bench-detection-")
  root = os.path.join(tmp, "coco")
  written = coco_shapes.write_shapes_coco(root, num_train=_TRAIN.value, num_val=_VAL.value,
                                          image_sizes=_COCO_SIZES, seed=1)
  jpeg_kib = np.mean([os.path.getsize(os.path.join(root, "train2017", name))
                      for name in os.listdir(os.path.join(root, "train2017"))]) / 1024
  config = data_config.default_dataset_config(
      "coco_instances/shapes", data_dir=os.path.join(tmp, "data"), manual_dir=root)
  prepare_s, _ = _timed(lambda: data.prepare_dataset(config))
  settings = data_config.settings(config)
  batch = _BATCH.value

  random_access, sequential = _record_reads(config, root, tmp)
  layout_s, plan_s = _planning_at_coco_scale(settings)
  first_s, _ = _timed(lambda: next(data.create_train_iterator(
      config, global_batch_size=batch, seed=0)))
  resumed_s, _ = _timed(lambda: next(data.create_train_iterator(
      config, global_batch_size=batch, seed=0, start_step=10**6)))
  train_rate, train_cpu = _images_per_second(
      data.create_train_iterator(config, global_batch_size=batch, seed=0), _BATCHES.value)
  eval_rate, eval_cpu = _images_per_second(
      data.create_eval_iterator(config, global_batch_size=batch), 10**9)
  decode_ms, place_ms = _per_image_ms(config)

  print(f"### Detection input ({datetime.date.today().isoformat()})\n")
  print(f"{machine.cpu_model()}, {os.cpu_count()} cores (shared with other jobs); "
        f"`python -m bench.detection_input {' '.join(sys.argv[1:])}`. {written.num_images['train']}"
        f" train / {written.num_images['validation']} validation images of 375-640 px, mean "
        f"JPEG {jpeg_kib:.0f} KiB (COCO's: about 160 KiB); img_scale 1333x800, canvases "
        f"(800, 1344) / (1344, 800), batch {batch}; prepared in {prepare_s:.1f} s.\n")
  print("| measure | value |\n|---|---:|")
  rows = [
      ("record reads/s, data source, random order (the pipeline)", f"{random_access:,.0f}"),
      ("record reads/s, as_dataset over TFRecord, sequential", f"{sequential:,.0f}"),
      (f"layout of {_COCO_TRAIN_IMAGES:,} images (sizes, canvases), s", f"{layout_s:.2f}"),
      ("one epoch's plan at that size, s", f"{plan_s:.3f}"),
      ("first train batch from step 0, s", f"{first_s:.2f}"),
      ("first train batch from step 10^6, s", f"{resumed_s:.2f}"),
      ("train images/s (CPU ms per image)", f"{train_rate:.1f} ({train_cpu:.1f})"),
      ("eval images/s (CPU ms per image)", f"{eval_rate:.1f} ({eval_cpu:.1f})"),
      ("decode a JPEG, CPU ms (mean of 8 images)", f"{decode_ms:.1f}"),
      ("resize to fit 1333x800 + flip + pad, CPU ms", f"{place_ms:.1f}"),
  ]
  for name, value in rows:
    print(f"| {name} | {value} |")


if __name__ == "__main__":
  app.run(main)
