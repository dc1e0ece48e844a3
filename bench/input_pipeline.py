"""Host input-pipeline cost per image: ours (train, eval) beside a plain tf.data map of the images.

Writes synthetic ILSVRC2012 tars (photo-sized JPEGs: 350..500 px sides, pixel noise) into a
temporary directory, prepares them with tfds' imagenet2012 builder, then times these pipelines of
uint8 batches on them:

* ours, train: ``create_train_iterator`` (torchvision's RandomResizedCrop 224 window, decoding only
  that window, antialiased bilinear resize, flip);
* plain, train: one ``map`` over the same records: ``decode_and_crop_jpeg`` of a
  ``stateless_sample_distorted_bounding_box`` window, ``tf.image.resize`` without antialiasing,
  flip, rounded to uint8 (what a new user would write, giving up the paper's preprocessing);
* ours, eval: ``create_eval_iterator`` (Resize(256) + CenterCrop(224) computed from only the
  source pixels of the crop; padded and masked);
* plain, eval: ``decode_and_crop_jpeg`` of the centre 224/256 of the shorter side,
  ``tf.image.resize`` without antialiasing, uint8;
* ours, train across epochs: ``create_train_iterator`` over two whole epochs, each epoch's new
  tf.data pipeline (its start-up) included.

Each measurement runs in its own process, so no other pipeline's background threads run in its
timed window, and the pipelines take turns round after round, so that load from other jobs on the
machine hits them alike. A window starts after warm-up batches and stays inside one epoch (one
eval pass, ending as many batches before its end) unless it says otherwise. CPU time is the
process's, all threads; the table gives the median over the rounds and the range. Prints a
markdown section for bench/RESULTS.md:

  python -m bench.input_pipeline [--rounds=3 --train_batches=40]      (repository root)
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from bench import machine

_CLASSES = flags.DEFINE_integer("classes", 16, "Training classes.")
_PER_CLASS = flags.DEFINE_integer("per_class", 125, "Training images per class.")
_VAL = flags.DEFINE_integer("val", 1000, "Validation images.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global (= local) batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds; every pipeline is timed once per round.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 3, "Untimed batches before each window.")
_TRAIN_BATCHES = flags.DEFINE_integer("train_batches", 40, "Timed train batches per window.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: time one pipeline, print JSON.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Internal: the prepared tfds data_dir.")

IMAGE_SIZE, RESIZE_SIZE = 224, 256
PIPELINES = {
    "ours_train": "ours, train (`create_train_iterator`)",
    "plain_train": "plain map, train (decode_and_crop + non-antialiased resize)",
    "ours_eval": "ours, eval (`create_eval_iterator`)",
    "plain_eval": "plain map, eval (decode_and_crop centre + non-antialiased resize)",
    "ours_train_epochs": "ours, train across 2 epochs (each epoch's pipeline start-up included)",
}


def _plain_train(config, batch_size):
  import tensorflow as tf
  import tensorflow_datasets as tfds
  builder = tfds.builder(config.name, data_dir=config.data_dir)
  ds = builder.as_dataset(split="train", shuffle_files=True,
                          decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.repeat().shuffle(config.shuffle_buffer, seed=0).enumerate()

  def augment(position, example):
    seed = tf.random.experimental.stateless_fold_in(tf.constant([0, 0], tf.int64), position)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(example["image"]), tf.zeros([0, 0, 4]), seed,
        area_range=config.crop_area_range, aspect_ratio_range=config.aspect_ratio_range,
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.image.decode_and_crop_jpeg(example["image"], tf.concat([begin[:2], size[:2]], 0),
                                          channels=3)
    image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE])
    image = tf.image.stateless_random_flip_left_right(image, seed)
    return {"image": tf.cast(image + 0.5, tf.uint8), "label": example["label"]}

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _plain_eval(config, batch_size):
  import tensorflow as tf
  import tensorflow_datasets as tfds
  builder = tfds.builder(config.name, data_dir=config.data_dir)
  ds = builder.as_dataset(split="validation", decoders={"image": tfds.decode.SkipDecoding()})

  def centre_crop(example):
    shape = tf.image.extract_jpeg_shape(example["image"])
    crop = tf.cast(IMAGE_SIZE / RESIZE_SIZE * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32),
                   tf.int32)
    window = tf.stack([(shape[0] - crop + 1) // 2, (shape[1] - crop + 1) // 2, crop, crop])
    image = tf.image.decode_and_crop_jpeg(example["image"], window, channels=3)
    image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE])
    return {"image": tf.cast(image + 0.5, tf.uint8), "label": example["label"]}

  ds = ds.map(centre_crop, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _time_worker(name):
  """Times pipeline `name` on the prepared data; prints one JSON line."""
  from lct_flax import input_pipeline as ip
  config = ip.default_dataset_config("imagenet2012", data_dir=_DATA_DIR.value,
                                     shuffle_buffer=1024)
  batch = _BATCH.value
  steps = ip.steps_per_epoch(config, batch, process_count=1)
  eval_batches = ip.num_eval_batches(config, batch, process_count=1)
  warmup, timed = _WARMUP.value, _TRAIN_BATCHES.value
  if name in ("ours_train", "ours_train_epochs"):
    if name == "ours_train_epochs":
      warmup, timed = steps, 2 * steps  # from the second epoch's first batch, two epochs
    batches = ip.create_train_iterator(config, global_batch_size=batch, seed=0, process_count=1,
                                       process_index=0, stop_step=warmup + timed)
  elif name == "ours_eval":
    batches = ip.create_eval_iterator(config, global_batch_size=batch, process_count=1,
                                      process_index=0)
    timed = eval_batches - 2 * warmup  # the pass ends: leave as many batches after as before
  elif name == "plain_train":
    batches = _plain_train(config, batch)
  else:
    batches = _plain_eval(config, batch)
    timed = eval_batches - 2 * warmup
  for _ in range(warmup):
    next(batches)
  cpu, wall, images = time.process_time(), time.perf_counter(), 0
  for _ in range(timed):
    example = next(batches)
    images += int(example["mask"].sum()) if "mask" in example else len(example["label"])
    assert example["image"].dtype.name == "uint8"
  cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
  print(json.dumps({"images": images, "cpu_ms": 1000 * cpu / images, "images_per_s": images / wall,
                    "load": os.getloadavg()[0]}))


def _run_worker(name, data_dir):
  argv = [sys.executable, "-m", "bench.input_pipeline", f"--worker={name}",
          f"--data_dir={data_dir}", f"--batch_size={_BATCH.value}",
          f"--warmup_batches={_WARMUP.value}", f"--train_batches={_TRAIN_BATCHES.value}"]
  result = subprocess.run(argv, capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return json.loads(result.stdout.strip().splitlines()[-1])


def _spread(values, fmt):
  return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-" \
         f"{format(max(values), fmt)})"


def main(argv):
  del argv
  if _WORKER.value:
    _time_worker(_WORKER.value)
    return
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from lct_flax import input_pipeline as ip
  from lct_flax.datasets import fake_ilsvrc

  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    fake_ilsvrc.write_ilsvrc_tars(
        os.path.join(tmp, "manual"), num_classes=_CLASSES.value,
        images_per_class=_PER_CLASS.value, num_val=_VAL.value, size_range=(350, 500),
        noise_std=20.0)
    write_s = time.perf_counter() - start
    tar_mb = sum(os.path.getsize(os.path.join(tmp, "manual", f))
                 for f in ip.MANUAL_FILES["imagenet2012"]) / 2**20
    config = ip.default_dataset_config("imagenet2012", data_dir=os.path.join(tmp, "data"),
                                       manual_dir=os.path.join(tmp, "manual"))
    ip.prepare_dataset(config)
    info = ip.get_dataset_info(config)
    steps = ip.steps_per_epoch(config, _BATCH.value, process_count=1)
    results = {name: [] for name in PIPELINES}
    loads = [os.getloadavg()[0]]
    for round_index in range(_ROUNDS.value):
      for name in PIPELINES:
        results[name].append(_run_worker(name, config.data_dir))
        loads.append(results[name][-1]["load"])
        print(f"round {round_index + 1}: {name} {results[name][-1]}", file=sys.stderr)

  examples = info.num_train_examples + info.num_eval_examples
  cores = os.cpu_count()
  print(f"\n## Input pipeline, {datetime.date.today().isoformat()}\n")
  print(f"CPU: {machine.cpu_model()}, {cores} cores (os.cpu_count()). TensorFlow {tf.__version__}, "
        f"tensorflow-datasets {tfds.__version__}. Command: "
        f"`{' '.join(['python -m bench.input_pipeline', *sys.argv[1:]])}`.\n")
  print(f"{examples} synthetic JPEGs ({info.num_train_examples} train, {info.num_eval_examples} "
        f"val; sides 350..500 px; {tar_mb * 2**10 / examples:.0f} KiB per image) written in "
        f"{write_s:.0f} s and prepared by tfds' imagenet2012 builder. Batch {_BATCH.value}, "
        f"{IMAGE_SIZE} px uint8 output; {steps} train batches per epoch. Each pipeline is timed "
        f"in its own process, {_ROUNDS.value} rounds, the pipelines taking turns; windows of "
        f"{_TRAIN_BATCHES.value} train batches, or of an eval pass but its first and last "
        f"{_WARMUP.value} batches, after {_WARMUP.value} warm-up batches. Load average (1 min) "
        f"during the runs: {min(loads):.1f} to {max(loads):.1f} on {cores} cores.\n")
  print("| pipeline | images per window | CPU ms per image, median (range) | vs plain map "
        "| wall images/s, median (range) |")
  print("|---|---:|---:|---:|---:|")
  plain_cpu = {task: statistics.median(r["cpu_ms"] for r in results[f"plain_{task}"])
               for task in ("train", "eval")}
  for name, description in PIPELINES.items():
    cpu = [r["cpu_ms"] for r in results[name]]
    task = "train" if "train" in name else "eval"
    print(f"| {description} | {results[name][0]['images']} | {_spread(cpu, '.2f')} "
          f"| {statistics.median(cpu) / plain_cpu[task]:.2f} "
          f"| {_spread([r['images_per_s'] for r in results[name]], '.0f')} |")


if __name__ == "__main__":
  app.run(main)
