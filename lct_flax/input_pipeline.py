"""tfds -> per-process batches: the paper's ImageNet preprocessing, padded exact eval, resumable
train.

Preprocessing (as in the paper's PyTorch/torchvision recipe):

* train: ``RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3))`` (10 attempts, centre-crop
  fallback, exactly torchvision's rule) + random horizontal flip;
* eval: resize the shorter side to 256 (``image_size / 0.875``), centre crop 224;
* both: uint8 NHWC output (PIL's images are uint8 too), rounded once after resizing. The jitted
  steps normalise with the dataset's RGB mean/std on the device (``pixels.normalize``): batches
  travel as a quarter of float32's bytes and the host does no float work.

Resizing is bilinear with antialiasing, PIL's bilinear filter that torchvision applies to PIL
images (the path the paper's pipeline used), with the arithmetic of ``tf.image.resize(...,
antialias=True)`` at about four fifths of its cost (``resampling``). JPEGs are decoded only inside
the window the output reads (``decode_and_crop_jpeg``): the train crop, or for eval the source
pixels of the centre crop, which is resampled directly from them (never the whole resized image);
other formats (the PNGs of ``sklearn_digits``) are decoded whole and then cropped.

Determinism: the augmentation randomness is stateless, derived from ``(seed, epoch, position of
the example within the epoch)``; files and the shuffle buffer are shuffled with a seed derived from
``(seed, epoch)``. The same seed gives the same batches whatever the threading; ``start_step``
resumes the stream exactly.

Multi-host: every process reads its own disjoint share of each split (``tfds.even_splits``) and
yields host-local batches of ``global_batch_size // process_count`` examples; ``prefetch_to_mesh``
assembles them into global ``jax.Array``s.

Undecodable images are skipped and counted (``num_skipped`` on the iterators, plus a warning):
batches are formed from fixed groups of records, the images that fail to decode are dropped from
their group, and eval pads the group with masked slots while train fills it with copies of its
decodable examples; batch shapes and the resumable step structure never change.

Prepare a dataset once before training, e.g. ImageNet from the two ILSVRC2012 tars in DIR::

  python -m lct_flax.input_pipeline --dataset=imagenet2012 --data_dir=DATA --manual_dir=DIR
"""

import collections
from concurrent import futures
import dataclasses
import itertools
import math
import os

from lct_flax import quiet_tensorflow

if __name__ == "__main__":   # run as a command: TensorFlow's import banners kept off the console
  quiet_tensorflow.install()

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lct_flax import datasets as _datasets  # noqa: F401  (registers sklearn_digits with tfds)
from lct_flax import parallel
from lct_flax import resampling
from lct_flax import tfds_preparation
# Defined without TensorFlow (configs and command-line checks use them); re-exported here.
from lct_flax.dataset_defaults import IMAGENET_MEAN_RGB  # noqa: F401
from lct_flax.dataset_defaults import IMAGENET_STDDEV_RGB  # noqa: F401
from lct_flax.dataset_defaults import default_dataset_config

CROP_ATTEMPTS = 10

# Datasets that tfds can only prepare from files the user downloads by hand.
MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}

_UNDECODABLE = "_undecodable"
# Parallel calls of the per-batch decode map: its iterators live for one batch, too briefly for
# tf.data's autotuner, so use every core.
_GROUP_PARALLELISM = os.cpu_count() or 1
# Batches before the end of a train epoch at which the next epoch's pipeline starts. Opened 8
# ahead, two pipelines ran side by side long enough to halve the digits demo's training rate on
# 2 cores for many epochs; at 2 the loop waits about 0.7 s per epoch change (bench/RESULTS.md).
_OPEN_NEXT_EPOCH_AHEAD = 2


def _hide_gpus_from_tensorflow():
  """tf.data runs on the host; keep TensorFlow from reserving accelerator memory JAX needs."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as error:  # TensorFlow had already initialised its devices.
    logging.warning("Could not hide GPUs from TensorFlow: %s", error)


_hide_gpus_from_tensorflow()


class DatasetError(ValueError):
  """A dataset is missing, unprepared, or cannot be split as asked."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Sizes a trainer needs, from tfds' ``builder.info``."""

  num_classes: int
  num_train_examples: int
  num_eval_examples: int


@dataclasses.dataclass(frozen=True)
class _Settings:
  """A dataset config resolved: every field present, derived values computed."""

  name: str
  data_dir: str | None
  manual_dir: str | None
  train_split: str
  eval_split: str
  image_size: int
  resize_size: int
  crop_area_range: tuple
  aspect_ratio_range: tuple
  random_flip: bool
  shuffle_buffer: int
  cache: bool
  mean: tuple
  std: tuple


def _settings(dataset_config):
  defaults = default_dataset_config(dataset_config.name)
  values = {field.name: dataset_config.get(field.name, defaults[field.name])
            for field in dataclasses.fields(_Settings)}
  if values["resize_size"] is None:
    values["resize_size"] = int(round(values["image_size"] / 0.875))
  if values["resize_size"] < values["image_size"]:
    raise DatasetError(f"dataset.resize_size={values['resize_size']} is smaller than "
                       f"dataset.image_size={values['image_size']}.")
  for key in ("crop_area_range", "aspect_ratio_range", "mean", "std"):
    values[key] = tuple(float(v) for v in values[key])
  return _Settings(**values)


def _count(process_count):
  return jax.process_count() if process_count is None else process_count


# ---------------------------------------------------------------------------------------------
# Builders and preparation.


def _source(settings):
  """How `tfds_preparation` finds and prepares the dataset (ImageNet: from its two tars)."""

  def command(manual_dir):
    line = f"python -m lct_flax.input_pipeline --dataset={settings.name}"
    if settings.data_dir:
      line += f" --data_dir={settings.data_dir}"
    if settings.name in MANUAL_FILES:
      line += f" --manual_dir={manual_dir}"
    return line

  def missing(manual_dir):
    files = MANUAL_FILES.get(settings.name, ())
    if all(tf.io.gfile.exists(os.path.join(manual_dir, f)) for f in files):
      return None
    return DatasetError(
        f"{settings.name} is not prepared and {manual_dir} lacks {' and '.join(files)}: put both "
        f"files in {manual_dir} (or point dataset.manual_dir at them) and run "
        f"`{command(manual_dir)}`.")

  return tfds_preparation.Source(
      name=settings.name, data_dir=settings.data_dir, manual_dir=settings.manual_dir,
      command=command, error=DatasetError, missing=missing,
      unknown="use a tfds name (see tfds.list_builders(), e.g. imagenet2012 or cifar10) or "
              "sklearn_digits")


def _prepared_builder(settings):
  """The tfds builder of a prepared dataset; DatasetError saying how to prepare it otherwise."""
  return tfds_preparation.prepared_builder(_source(settings))


def prepare_dataset(dataset_config):
  """Downloads and prepares the dataset once (a no-op when it is already prepared).

  imagenet2012 is built from ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` in
  ``dataset.manual_dir`` (default ``<data_dir>/downloads/manual``) and never touches the network;
  if either tar is missing this raises DatasetError naming the directory and both files. Other
  tfds datasets download as tfds does; ``sklearn_digits`` is built from scikit-learn's bundled
  copy. Run it on one process (or before launching) when processes share ``data_dir``.
  """
  tfds_preparation.prepare(_source(_settings(dataset_config)))


def _process_splits(split, process_count):
  return tfds.even_splits(split, n=process_count)


def _share_sizes(builder, split, process_count):
  """Examples in each process's share of ``split``."""
  return [builder.info.splits[s].num_examples for s in _process_splits(split, process_count)]


def get_dataset_info(dataset_config):
  """Number of classes and train/eval split sizes, from the prepared dataset's ``builder.info``."""
  settings = _settings(dataset_config)
  builder = _prepared_builder(settings)
  return DatasetInfo(
      num_classes=builder.info.features["label"].num_classes,
      num_train_examples=builder.info.splits[settings.train_split].num_examples,
      num_eval_examples=builder.info.splits[settings.eval_split].num_examples)


def _steps_per_epoch(builder, settings, local_batch, process_count):
  steps = min(_share_sizes(builder, settings.train_split, process_count)) // local_batch
  if steps == 0:
    raise DatasetError(f"{settings.name}:{settings.train_split} has fewer examples per process "
                       f"than the local batch size {local_batch}.")
  return steps


def steps_per_epoch(dataset_config, global_batch_size, process_count=None):
  """Train steps per epoch: the smallest process share // local batch (same on every process)."""
  settings = _settings(dataset_config)
  process_count = _count(process_count)
  local_batch = parallel.local_batch_size(global_batch_size, process_count, error=DatasetError)
  return _steps_per_epoch(_prepared_builder(settings), settings, local_batch, process_count)


def _num_eval_batches(builder, settings, local_batch, process_count):
  return math.ceil(max(_share_sizes(builder, settings.eval_split, process_count)) / local_batch)


def num_eval_batches(dataset_config, global_batch_size, process_count=None):
  """Batches ``create_eval_iterator`` yields on every process (the largest share, padded)."""
  settings = _settings(dataset_config)
  process_count = _count(process_count)
  local_batch = parallel.local_batch_size(global_batch_size, process_count, error=DatasetError)
  return _num_eval_batches(_prepared_builder(settings), settings, local_batch, process_count)


# ---------------------------------------------------------------------------------------------
# Preprocessing: pure TensorFlow functions of encoded image bytes.


def random_resized_crop_window(seed, height, width, area_range, ratio_range,
                               attempts=CROP_ATTEMPTS):
  """``[top, left, crop_height, crop_width]`` (int32) by torchvision's RandomResizedCrop rule.

  Up to ``attempts`` candidates: area ``U(area_range) * height * width``, aspect ratio
  ``exp(U(log ratio_range))``, sides rounded; the first that fits is placed uniformly at random.
  If none fits, the whole image is centre-cropped to the nearest aspect ratio in range.
  ``seed`` is a stateless seed (shape [2]); the window is a pure function of it.
  """
  area_seed, ratio_seed, top_seed, left_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  height_f = tf.cast(height, tf.float64)
  width_f = tf.cast(width, tf.float64)
  target_area = height_f * width_f * tf.random.stateless_uniform(
      [attempts], area_seed, area_range[0], area_range[1], dtype=tf.float64)
  aspect = tf.exp(tf.random.stateless_uniform(
      [attempts], ratio_seed, math.log(ratio_range[0]), math.log(ratio_range[1]),
      dtype=tf.float64))
  crop_w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  def sampled():
    h, w = crop_h[first], crop_w[first]
    top = tf.random.stateless_uniform([], top_seed, 0, height - h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], left_seed, 0, width - w + 1, dtype=tf.int32)
    return tf.stack([top, left, h, w])

  def centre_fallback():
    in_ratio = width_f / height_f
    h = tf.where(in_ratio < ratio_range[0],
                 tf.cast(tf.round(width_f / ratio_range[0]), tf.int32), height)
    w = tf.where(in_ratio > ratio_range[1],
                 tf.cast(tf.round(height_f * ratio_range[1]), tf.int32), width)
    return tf.stack([(height - h) // 2, (width - w) // 2, h, w])

  return tf.cond(tf.reduce_any(fits), sampled, centre_fallback)


def _decode_window(image_bytes, plan):
  """The pixels (uint8 RGB) inside a window of an image in any format tf.io.decode_image knows.

  ``plan(height, width)`` returns the window ``[top, left, h, w]`` (int32) and a tuple of other
  tensors, returned alongside the pixels. JPEGs are decoded only inside the window
  (``decode_and_crop_jpeg``, DCT as PIL decodes them); other formats whole, then cropped.
  """

  def jpeg():
    shape = tf.image.extract_jpeg_shape(image_bytes)
    window, extras = plan(shape[0], shape[1])
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3,
                                         dct_method="INTEGER_ACCURATE"), extras

  def other():
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    shape = tf.shape(image)
    window, extras = plan(shape[0], shape[1])
    top, left, height, width = tf.unstack(window)
    return image[top:top + height, left:left + width], extras

  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def preprocess_for_train(image_bytes, seed, *, image_size, area_range=(0.08, 1.0),
                         ratio_range=(3 / 4, 4 / 3), random_flip=True):
  """RandomResizedCrop(image_size) + random horizontal flip -> uint8 [S, S, 3].

  ``seed``: stateless seed (shape [2]); the output is a pure function of bytes and seed. The
  crop window is resized to S x S with the antialiased bilinear filter (``resampling.resize``).
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

  def plan(height, width):
    return random_resized_crop_window(crop_seed, height, width, area_range, ratio_range), ()

  window, _ = _decode_window(image_bytes, plan)
  scale = tf.cast(image_size, tf.float32) / tf.cast(tf.shape(window)[:2], tf.float32)
  flip = tf.random.stateless_uniform([], flip_seed) < 0.5 if random_flip else None
  return resampling.resize(window, image_size, tf.unstack(scale), flip=flip)


def _centre_crop_plan(height, width, image_size, resize_size):
  """torchvision's Resize(resize_size) + CenterCrop(image_size) of a height x width image as one
  resampling of a source window: (window, (scale, translation)).

  The window holds the source pixels the crop's pixels read, plus one pixel on each side where
  the image has one: ``decode_and_crop_jpeg`` decodes a window's first and last columns from
  chroma without its neighbours, so those may differ from a whole-image decode; they fall
  outside every filter tap.
  """
  short = tf.cast(tf.minimum(height, width), tf.float64)
  new_h = tf.where(height <= width, resize_size,
                   tf.cast(resize_size * tf.cast(height, tf.float64) / short, tf.int32))
  new_w = tf.where(width <= height, resize_size,
                   tf.cast(resize_size * tf.cast(width, tf.float64) / short, tf.int32))
  top = tf.cast(tf.round((new_h - image_size) / 2), tf.int32)
  left = tf.cast(tf.round((new_w - image_size) / 2), tf.int32)
  scale = tf.cast(tf.stack([new_h, new_w]), tf.float32) / tf.cast(tf.stack([height, width]),
                                                                  tf.float32)
  y0, y1 = resampling.source_span(height, scale[0], top, image_size)
  x0, x1 = resampling.source_span(width, scale[1], left, image_size)
  y0, x0 = tf.maximum(y0 - 1, 0), tf.maximum(x0 - 1, 0)
  y1, x1 = tf.minimum(y1 + 1, height), tf.minimum(x1 + 1, width)
  translation = tf.cast(tf.stack([y0, x0]), tf.float32) * scale - tf.cast(tf.stack([top, left]),
                                                                          tf.float32)
  return tf.stack([y0, x0, y1 - y0, x1 - x0]), (scale, translation)


def preprocess_for_eval(image_bytes, *, image_size, resize_size):
  """Resize the shorter side to ``resize_size``, centre crop ``image_size`` -> uint8 [S, S, 3].

  Sizes as torchvision's ``Resize(resize_size)`` + ``CenterCrop(image_size)``: the longer side
  becomes ``int(resize_size * long / short)``, the crop's offsets ``round((side - crop) / 2)``.
  Only the crop's pixels are computed, from only the source pixels they read: the values are
  those of resizing the whole image and cropping it (to float32 rounding), rounded to uint8.
  """
  window, (scale, translation) = _decode_window(
      image_bytes, lambda height, width: _centre_crop_plan(height, width, image_size,
                                                           resize_size))
  image = resampling.resize(window, image_size, tf.unstack(scale), tf.unstack(translation))
  return tf.ensure_shape(image, [image_size, image_size, 3])


# Every function this module gives tf.data is written for graph mode (tf.cond, no Python control
# flow on tensors), so AutoGraph's rewriting of its source is skipped: building a process's train
# and eval datasets took 1.4 s longer with it (same batches).
_graph_only = tf.autograph.experimental.do_not_convert


def _map_and_batch_skipping_errors(ds, fn, batch_size):
  """Batches of ``fn`` over ``batch_size`` elements of ``ds`` at a time, minus failed elements.

  Graph ops cannot catch errors, so each group of ``batch_size`` input elements is mapped inside
  its own small dataset whose ``ignore_errors`` drops the elements that ``fn`` (a dict-valued
  function) fails on, e.g. undecodable images. Each group yields exactly one batch of the ``n``
  surviving outputs, in order (``n`` may be 0), plus ``_UNDECODABLE``: how many were dropped.
  Groups run two at a time, each with a parallel map; ``fn`` outputs must have static shapes.
  """

  def group(*elements):
    size = tf.shape(tf.nest.flatten(elements)[0])[0]
    survivors = tf.data.Dataset.from_tensor_slices(elements).map(
        _graph_only(fn), num_parallel_calls=_GROUP_PARALLELISM,
        deterministic=True).ignore_errors()
    empty = tf.nest.map_structure(lambda spec: tf.zeros([0, *spec.shape], spec.dtype),
                                  survivors.element_spec)
    batch = survivors.batch(batch_size).concatenate(
        tf.data.Dataset.from_tensors(empty)).take(1)
    return batch.map(_graph_only(lambda b: {**b, _UNDECODABLE: size - tf.shape(b["label"])[0]}))

  return ds.batch(batch_size).interleave(_graph_only(group), cycle_length=2, block_length=1,
                                         num_parallel_calls=2, deterministic=True)


# ---------------------------------------------------------------------------------------------
# Datasets and iterators.


def _options():
  options = tf.data.Options()
  options.deterministic = True
  # One thread per op: parallelism comes from tf.data's parallel map/interleave.
  options.threading.max_intra_op_parallelism = 1
  return options


def _read(builder, split, shuffle_seed=None):
  """Records ``{"image": encoded bytes, "label": int32}``; files shuffled when given a seed."""
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False,
                                skip_prefetch=True)
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                          decoders={"image": tfds.decode.SkipDecoding()},
                          read_config=read_config)
  return ds.map(_graph_only(lambda ex: {"image": ex["image"],
                                        "label": tf.cast(ex["label"], tf.int32)}),
                num_parallel_calls=tf.data.AUTOTUNE)


def _epoch_seed(seed, epoch):
  """A 31-bit seed for epoch ``epoch`` of run ``seed`` (files and shuffle buffer)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)


class _SkipCountingIterator:
  """Numpy batches from a generator; counts and logs the examples that failed to decode.

  ``num_skipped`` is the running total of undecodable images in the batches yielded so far.
  """

  def __init__(self, batches, description):
    self._batches = batches
    self._description = description
    self.num_skipped = 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._batches)
    skipped = int(np.sum(batch.pop(_UNDECODABLE)))
    if skipped:
      self.num_skipped += skipped
      logging.warning("%s: skipped %d undecodable images (%d so far).", self._description,
                      skipped, self.num_skipped)
    return batch


def _fill_batch(batch, batch_size):
  """Completes a batch of ``n`` survivors to ``batch_size`` by cycling through them."""
  num_good = tf.shape(batch["label"])[0]
  check = tf.debugging.assert_positive(num_good, message="No image of a batch could be decoded.")
  with tf.control_dependencies([check]):
    source = tf.math.floormod(tf.range(batch_size), num_good)
  image, label = tf.cond(
      num_good < batch_size,
      lambda: (tf.gather(batch["image"], source), tf.gather(batch["label"], source)),
      lambda: (batch["image"], batch["label"]))
  return {"image": tf.ensure_shape(image, [batch_size, *batch["image"].shape[1:]]),
          "label": tf.ensure_shape(label, [batch_size]), _UNDECODABLE: batch[_UNDECODABLE]}


def _pad_batch(batch, batch_size):
  """Pads a batch of ``n`` survivors with zeros to ``batch_size``; ``mask`` marks the real ones."""
  num_real = tf.shape(batch["label"])[0]
  pad = batch_size - num_real
  image = tf.pad(batch["image"], [[0, pad], [0, 0], [0, 0], [0, 0]])
  return {"image": tf.ensure_shape(image, [batch_size, *batch["image"].shape[1:]]),
          "label": tf.ensure_shape(tf.pad(batch["label"], [[0, pad]]), [batch_size]),
          "mask": tf.range(batch_size) < num_real, _UNDECODABLE: batch[_UNDECODABLE]}


def _train_epoch(records, settings, *, seed, epoch, num_batches, first_batch, local_batch):
  """Epoch ``epoch`` of one process, from batch ``first_batch`` on (a tf.data.Dataset)."""
  ds = records.shuffle(settings.shuffle_buffer, seed=_epoch_seed(seed, epoch))
  ds = ds.take(num_batches * local_batch).enumerate().skip(first_batch * local_batch)
  epoch_key = tf.constant([seed, epoch], tf.int64)

  def augment(position, example):
    example_seed = tf.random.experimental.stateless_fold_in(epoch_key, position)
    image = preprocess_for_train(
        example["image"], example_seed, image_size=settings.image_size,
        area_range=settings.crop_area_range, ratio_range=settings.aspect_ratio_range,
        random_flip=settings.random_flip)
    return {"image": image, "label": example["label"]}

  ds = _map_and_batch_skipping_errors(ds, augment, local_batch)
  ds = ds.map(_graph_only(lambda batch: _fill_batch(batch, local_batch)))
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def create_train_iterator(dataset_config, *, global_batch_size, seed, start_step=0,
                          stop_step=None, process_index=None, process_count=None):
  """Host-local train batches ``{"image": u8[B,H,W,3], "label": i32[B]}`` (numpy) of the steps
  from ``start_step`` up to ``stop_step`` (endless when None).

  ``B = global_batch_size // process_count``. Every epoch has ``steps_per_epoch`` batches on every
  process (each process's share is shuffled, then cut to that many full batches); epoch ``e`` is
  shuffled with a seed derived from ``(seed, e)``. Starting at ``start_step`` yields exactly what
  the uninterrupted stream yields from that step on; no epoch past ``stop_step`` is opened. The
  iterator's ``num_skipped`` counts undecodable images so far.
  """
  settings = _settings(dataset_config)
  process_index, process_count = parallel.process_of(process_index, process_count,
                                                     error=DatasetError)
  local_batch = parallel.local_batch_size(global_batch_size, process_count, error=DatasetError)
  if seed < 0 or start_step < 0:
    raise DatasetError(f"seed ({seed}) and start_step ({start_step}) must be non-negative.")
  builder = _prepared_builder(settings)
  num_batches = _steps_per_epoch(builder, settings, local_batch, process_count)
  share = _process_splits(settings.train_split, process_count)[process_index]
  cached = _read(builder, share).cache() if settings.cache else None

  def open_epoch(epoch, first_batch):
    """Numpy batches of ``epoch`` from ``first_batch`` on; the first one already computed."""
    records = cached if cached is not None else _read(builder, share, _epoch_seed(seed, epoch))
    logging.vlog(1, "%s train epoch %d from batch %d (%d batches).", settings.name,
                 epoch, first_batch, num_batches)
    iterator = _train_epoch(
        records, settings, seed=seed, epoch=epoch, num_batches=num_batches,
        first_batch=first_batch, local_batch=local_batch).as_numpy_iterator()
    return itertools.chain([next(iterator)], iterator)

  return _SkipCountingIterator(_epochs_in_turn(open_epoch, num_batches, start_step, stop_step),
                               f"{settings.name}:{settings.train_split}")


def train_steps(start_step, stop_step=None):
  """The step numbers from ``start_step`` up to ``stop_step`` (endless when None)."""
  return itertools.count(start_step) if stop_step is None else range(start_step, stop_step)


def _epochs_in_turn(open_epoch, num_batches, start_step, stop_step):
  """The batches of the steps from ``start_step`` up to ``stop_step`` (endless when None), from
  the iterators ``open_epoch(epoch, first_batch)`` gives.

  Each epoch is its own tf.data pipeline (its seeds are Python ints). The next one is opened in
  a background thread ``_OPEN_NEXT_EPOCH_AHEAD`` batches before it is needed, hiding its start-up
  (tracing, filling the shuffle buffer), and only if a step of it is; a finished one is freed in
  another, since stopping a tf.data iterator can wait seconds on its autotuning thread.
  """
  if stop_step is not None and stop_step <= start_step:
    return
  steps = train_steps(start_step, stop_step)
  with futures.ThreadPoolExecutor(1, thread_name_prefix="next_train_epoch") as opener, \
      futures.ThreadPoolExecutor(1, thread_name_prefix="finished_train_epoch") as closer:
    upcoming, current = opener.submit(open_epoch, *divmod(start_step, num_batches)), None
    for step in steps:
      epoch, batch = divmod(step, num_batches)
      if step == start_step or batch == 0:
        finished, current = [current], upcoming.result()
        closer.submit(finished.clear)   # the finished iterator's last reference goes there
        open_next_at = max(num_batches - _OPEN_NEXT_EPOCH_AHEAD, batch)
      if batch == open_next_at and (stop_step is None or (epoch + 1) * num_batches < stop_step):
        upcoming = opener.submit(open_epoch, epoch + 1, 0)
      yield next(current)


def _eval_dataset(builder, settings, share, *, num_batches, local_batch):
  def preprocess(example):
    image = preprocess_for_eval(example["image"], image_size=settings.image_size,
                                resize_size=settings.resize_size)
    return {"image": image, "label": example["label"]}

  ds = _map_and_batch_skipping_errors(_read(builder, share), preprocess, local_batch)
  ds = ds.map(_graph_only(lambda batch: _pad_batch(batch, local_batch)))
  # Processes with a smaller share end with fully masked batches: all yield num_batches.
  blank = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat()).take(num_batches)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def create_eval_iterator(dataset_config, *, global_batch_size, process_index=None,
                         process_count=None):
  """One pass over this process's share of the eval split, padded and masked.

  Yields ``{"image": u8[B,H,W,3], "label": i32[B], "mask": bool[B]}`` (numpy),
  ``B = global_batch_size // process_count``. Across all processes every decodable example of
  the split appears exactly once with ``mask`` True; padding and undecodable images have ``mask``
  False. Every process yields ``num_eval_batches(...)`` batches, computed from the split sizes,
  so no communication is needed. ``num_skipped`` counts undecodable images.
  """
  settings = _settings(dataset_config)
  process_index, process_count = parallel.process_of(process_index, process_count,
                                                     error=DatasetError)
  local_batch = parallel.local_batch_size(global_batch_size, process_count, error=DatasetError)
  builder = _prepared_builder(settings)
  share = _process_splits(settings.eval_split, process_count)[process_index]
  ds = _eval_dataset(
      builder, settings, share,
      num_batches=_num_eval_batches(builder, settings, local_batch, process_count),
      local_batch=local_batch)
  return _SkipCountingIterator(ds.as_numpy_iterator(), f"{settings.name}:{settings.eval_split}")


def prefetch_to_mesh(iterator, sharding, size=2):
  """Turns host-local numpy batches into global ``jax.Array``s, keeping ``size`` in flight.

  Each leaf becomes ``jax.make_array_from_process_local_data(sharding, leaf)``: the global batch
  is the concatenation of the processes' local batches along axis 0, laid out by ``sharding``
  (e.g. ``NamedSharding(mesh, P("data"))``). Transfers are asynchronous, so keeping ``size``
  batches queued overlaps them with compute.
  """
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x), batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flag_values = flags.FLAGS
  config = default_dataset_config(flag_values.dataset, data_dir=flag_values.data_dir,
                                  manual_dir=flag_values.manual_dir)
  prepare_dataset(config)
  info = get_dataset_info(config)
  print(f"{config.name} ready in {_prepared_builder(_settings(config)).data_dir}: {info}")


if __name__ == "__main__":
  from lct_flax import cli

  flags.DEFINE_string("dataset", "imagenet2012", "tfds name of the dataset to prepare.")
  flags.DEFINE_string("data_dir", None, "tfds data directory (default: tfds' default).")
  flags.DEFINE_string("manual_dir", None,
                      "Directory with manually downloaded files, e.g. the two ILSVRC2012 tars "
                      "(default: <data_dir>/downloads/manual).")
  cli.run(_main)
