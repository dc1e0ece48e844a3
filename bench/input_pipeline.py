"""Host-side input-pipeline throughput on ImageNet-sized JPEGs, through the real imagenet2012 builder.

Writes synthetic ILSVRC2012 tars (photo-like JPEG sizes: 350..500 px sides, pixel noise) into a
temporary directory, prepares them with tfds' imagenet2012 builder, then times:

* train: ``create_train_iterator`` (RandomResizedCrop 224 + flip, decode only the crop window);
* train without the undecodable-image check: the same preprocessing in a plain parallel map,
  to show what the skip-and-count mechanism costs;
* eval: ``create_eval_iterator`` (resize 256, centre crop 224, padded and masked).

Prints a markdown section (date, CPU, cores, command, table) for bench/RESULTS.md:

  python -m bench.input_pipeline      (from the repository root)
"""

import datetime
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf
import tensorflow_datasets as tfds

from lct_flax import input_pipeline as ip
from lct_flax.datasets import fake_ilsvrc

_CLASSES = flags.DEFINE_integer("classes", 10, "Training classes.")
_PER_CLASS = flags.DEFINE_integer("per_class", 100, "Training images per class.")
_VAL = flags.DEFINE_integer("val", 200, "Validation images.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global (= local) batch size.")
_TRAIN_BATCHES = flags.DEFINE_integer("train_batches", 62, "Timed training batches.")
_EVAL_PASSES = flags.DEFINE_integer("eval_passes", 2, "Timed passes over the validation split.")


def _cpu_model():
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return "unknown"


def _measure(batches):
  """(images, images/s, CPU ms per image) over ``batches`` after one untimed warm-up batch.

  Only real examples count (``mask`` True in eval). CPU time is this process's, all threads:
  unlike wall time it hardly depends on what else runs on the machine.
  """
  next(batches)
  wall, cpu, count = time.perf_counter(), time.process_time(), 0
  for batch in batches:
    count += int(batch["mask"].sum()) if "mask" in batch else len(batch["label"])
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return count, count / wall, 1000 * cpu / count


def _limited(iterator, n):
  for _ in range(n):
    yield next(iterator)


def _plain_train_batches(config, batch_size, seed):
  """The train preprocessing as one parallel map: no skip-and-count, no epochs."""
  builder = tfds.builder(config.name, data_dir=config.data_dir)
  ds = builder.as_dataset(split="train", shuffle_files=True,
                          decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.repeat().enumerate()

  def augment(position, example):
    example_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, 0], tf.int64), position)
    return {"image": ip.preprocess_for_train(example["image"], example_seed,
                                             image_size=config.image_size),
            "label": example["label"]}

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def main(argv):
  del argv
  cores = os.cpu_count()
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    fake_ilsvrc.write_ilsvrc_tars(
        os.path.join(tmp, "manual"), num_classes=_CLASSES.value,
        images_per_class=_PER_CLASS.value, num_val=_VAL.value, size_range=(350, 500),
        noise_std=20.0)
    write_s = time.perf_counter() - start
    tar_mb = sum(os.path.getsize(os.path.join(tmp, "manual", f))
                 for f in ip.MANUAL_FILES["imagenet2012"]) / 2**20
    config = ip.default_dataset_config(
        "imagenet2012", data_dir=os.path.join(tmp, "data"),
        manual_dir=os.path.join(tmp, "manual"), shuffle_buffer=1024)
    start = time.perf_counter()
    ip.prepare_dataset(config)
    prepare_s = time.perf_counter() - start
    info = ip.get_dataset_info(config)
    batch = _BATCH.value
    steps = ip.steps_per_epoch(config, batch, process_count=1)

    train = ip.create_train_iterator(config, global_batch_size=batch, seed=0, process_count=1,
                                     process_index=0)
    load = os.getloadavg()[0]
    rows = [(f"train: `create_train_iterator`, within the first epoch ({steps - 3} batches)",
             _measure(_limited(train, steps - 2))),
            (f"train: `create_train_iterator`, the next {_TRAIN_BATCHES.value} batches "
             f"(with epoch restarts)", _measure(_limited(train, _TRAIN_BATCHES.value + 1))),
            ("train: same preprocessing, plain map (no skip-and-count)",
             _measure(_limited(_plain_train_batches(config, batch, 0),
                               _TRAIN_BATCHES.value + 1)))]

    def eval_batches():
      for _ in range(_EVAL_PASSES.value + 1):
        yield from ip.create_eval_iterator(config, global_batch_size=batch, process_count=1,
                                           process_index=0)

    rows.append(("eval: `create_eval_iterator`", _measure(eval_batches())))

  examples = info.num_train_examples + info.num_eval_examples
  print(f"\n## Input pipeline, {datetime.date.today().isoformat()}\n")
  print(f"CPU: {_cpu_model()}, {cores} cores (os.cpu_count()). TensorFlow {tf.__version__}, "
        f"tensorflow-datasets {tfds.__version__}. Command: "
        f"`{' '.join(['python -m bench.input_pipeline', *sys.argv[1:]])}`.\n")
  print(f"{examples} synthetic JPEGs ({info.num_train_examples} train, {info.num_eval_examples} "
        f"val; sides 350..500 px; {tar_mb:.1f} MiB of tars, {tar_mb * 2**10 / examples:.0f} "
        f"KiB per image) written in {write_s:.1f} s and prepared by tfds' imagenet2012 builder in "
        f"{prepare_s:.1f} s. Batch {batch}, 224 px output, float32; one warm-up batch untimed; "
        f"{steps} train batches per epoch; each epoch is a new tf.data pipeline, "
        f"whose start-up (about 1 s here) is only partly hidden by building it in the "
        f"background. Load average when timing started: {load:.1f} (other "
        f"jobs on the machine lower the wall-clock rates; CPU time per image is robust to them; "
        f"images/s per core = 1000 / CPU ms per image).\n")
  print("| stage | images timed | images/s (wall) | wall images/s / cores | CPU ms per image "
        "| images/s per core (CPU) |")
  print("|---|---:|---:|---:|---:|---:|")
  for name, (count, rate, cpu_ms) in rows:
    print(f"| {name} | {count} | {rate:.0f} | {rate / cores:.0f} | {cpu_ms:.2f} "
          f"| {1000 / cpu_ms:.0f} |")


if __name__ == "__main__":
  app.run(main)
