"""Input pipeline through the real tfds imagenet2012 builder, prepared from tiny fake ILSVRC
tars."""

import collections
import functools
import hashlib
import importlib.util
import io
import itertools
import logging
import os
import re
import subprocess
import sys
import threading

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from lct_flax import input_pipeline as ip
from lct_flax import resampling
from lct_flax.datasets import fake_ilsvrc
import reference_preprocessing

def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _nearest_class(image, colours):
  """The label whose base colour is nearest to the image's mean colour."""
  mean_colour = image.mean(axis=(0, 1))
  return min(colours, key=lambda label: np.linalg.norm(colours[label] - mean_colour))


def _fingerprint(image):
  return hashlib.sha1(image.tobytes()).hexdigest()


def _assert_batches_equal(expected, actual):
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _masked(batches):
  """(fingerprint, label) of every example with mask True."""
  return [(_fingerprint(image), int(label)) for batch in batches
          for image, label, keep in zip(batch["image"], batch["label"], batch["mask"]) if keep]


def test_dataset_info_and_step_counts(imagenet_config):
  info = ip.get_dataset_info(imagenet_config)
  assert info == ip.DatasetInfo(num_classes=1000, num_train_examples=12, num_eval_examples=9)
  assert ip.steps_per_epoch(imagenet_config, 4, process_count=1) == 3
  assert ip.steps_per_epoch(imagenet_config, 10, process_count=2) == 1  # shares 6/6, batch 5.
  assert ip.num_eval_batches(imagenet_config, 4, process_count=1) == 3
  assert ip.num_eval_batches(imagenet_config, 8, process_count=2) == 2  # shares 5/4, batch 4.


def test_train_batches_have_the_right_shapes_values_and_labels(imagenet_config, fake_ilsvrc_tars):
  batches = _take(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=0), 3)
  labels = []
  for batch in batches:
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    for image, label in zip(batch["image"], batch["label"]):
      assert _nearest_class(image, fake_ilsvrc_tars.colours) == label
    labels += batch["label"].tolist()
  # One epoch (3 steps of 4) visits each of the 12 training images once.
  assert sorted(labels) == sorted(label for _, label in fake_ilsvrc_tars.train)


def test_eval_batches_have_the_right_shapes_values_and_labels(imagenet_config, fake_ilsvrc_tars):
  batches = list(ip.create_eval_iterator(imagenet_config, global_batch_size=4, process_count=1,
                                         process_index=0))
  assert len(batches) == 3
  for batch in batches:
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and batch["mask"].dtype == np.bool_
    for image, label, keep in zip(batch["image"], batch["label"], batch["mask"]):
      if keep:
        assert _nearest_class(image, fake_ilsvrc_tars.colours) == label
  np.testing.assert_array_equal(batches[-1]["mask"], [True, False, False, False])
  assert sorted(label for _, label in _masked(batches)) == sorted(
      label for _, label in fake_ilsvrc_tars.val)


def test_eval_is_deterministic(imagenet_config):
  first = list(ip.create_eval_iterator(imagenet_config, global_batch_size=4, process_count=1))
  second = list(ip.create_eval_iterator(imagenet_config, global_batch_size=4, process_count=1))
  _assert_batches_equal(first, second)


def test_eval_over_two_processes_counts_every_example_once(imagenet_config):
  single = _masked(ip.create_eval_iterator(imagenet_config, global_batch_size=4, process_count=1))
  assert len(single) == 9 and len(set(single)) == 9
  per_process = [list(ip.create_eval_iterator(imagenet_config, global_batch_size=8,
                                              process_index=i, process_count=2))
                 for i in range(2)]
  # Shares of 5 and 4 examples in local batches of 4: both processes yield 2 batches, the second
  # process's last batch only padding.
  assert [len(batches) for batches in per_process] == [2, 2]
  assert not per_process[1][1]["mask"].any()
  both = _masked(per_process[0]) + _masked(per_process[1])
  assert len(both) == 9
  assert collections.Counter(both) == collections.Counter(single)


def test_train_crops_vary_across_epochs_and_examples(imagenet_config):
  # Without a shuffle buffer (one file), epochs visit the examples in the same order.
  imagenet_config.shuffle_buffer = 1
  epochs = _take(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=0), 6)
  first = np.concatenate([b["image"] for b in epochs[:3]])
  second = np.concatenate([b["image"] for b in epochs[3:]])
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in epochs[:3]]),
                                np.concatenate([b["label"] for b in epochs[3:]]))
  differs = np.any(first != second, axis=(1, 2, 3))
  assert differs.sum() >= 11  # At most a coincidence (e.g. two full-image crops) may repeat.
  assert len({_fingerprint(image) for image in first}) == 12


def test_same_seed_same_batches_other_seed_other_batches(imagenet_config):
  def stream(seed):
    return _take(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=seed), 4)

  reference = stream(0)
  _assert_batches_equal(reference, stream(0))
  other = stream(1)
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(reference, other))


def test_cached_stream_matches_itself_and_covers_each_epoch(imagenet_config, fake_ilsvrc_tars):
  imagenet_config.cache = True
  reference = _take(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=3), 6)
  _assert_batches_equal(
      reference, _take(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=3), 6))
  expected = sorted(label for _, label in fake_ilsvrc_tars.train)
  for epoch in (reference[:3], reference[3:]):
    assert sorted(np.concatenate([b["label"] for b in epoch]).tolist()) == expected


@pytest.mark.parametrize("start_step", [2, 3, 5])
def test_restarting_the_train_stream_matches_the_uninterrupted_one(imagenet_config, start_step):
  # 3 steps per epoch: step 2 is mid-epoch, 3 an epoch start, 5 the second epoch's last.
  uninterrupted = _take(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=7), 7)
  resumed = _take(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=7,
                                           start_step=start_step), 7 - start_step)
  _assert_batches_equal(uninterrupted[start_step:], resumed)


@pytest.mark.parametrize("start_step, stop_step", [(2, 6), (4, 5)])
def test_a_train_stream_with_a_stop_step_ends_there_opening_no_later_epoch(
    imagenet_config, monkeypatch, start_step, stop_step):
  # 3 steps per epoch: (2, 6) ends at an epoch's end, (4, 5) in the middle of one.
  uninterrupted = _take(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=7), 6)
  opened, open_epoch = [], ip._train_epoch

  def recording_open_epoch(records, settings, *, epoch, **kwargs):
    opened.append(epoch)
    return open_epoch(records, settings, epoch=epoch, **kwargs)

  monkeypatch.setattr(ip, "_train_epoch", recording_open_epoch)
  bounded = list(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=7,
                                          start_step=start_step, stop_step=stop_step))
  _assert_batches_equal(uninterrupted[start_step:stop_step], bounded)
  assert opened == list(range(start_step // 3, -(-stop_step // 3)))


def test_epochs_are_opened_in_turn_and_the_finished_ones_freed_off_the_consuming_thread():
  opened, freed = [], []

  class Epoch:
    """An epoch's batches (epoch, batch) that records where it is freed."""

    def __init__(self, epoch, first_batch):
      opened.append((epoch, first_batch))
      self.epoch, self.batches = epoch, iter([(epoch, b) for b in range(first_batch, 5)])

    def __next__(self):
      return next(self.batches)

    def __del__(self):
      freed.append((self.epoch, threading.current_thread().name))

  assert list(ip._epochs_in_turn(Epoch, 5, 3, 12)) == [divmod(s, 5) for s in range(3, 12)]
  assert opened == [(0, 3), (1, 0), (2, 0)]
  assert sorted(freed)[:2] == [(0, "finished_train_epoch_0"), (1, "finished_train_epoch_0")]
  assert list(ip._epochs_in_turn(Epoch, 5, 3, 3)) == [] and len(opened) == 3


def test_two_processes_read_disjoint_train_shares(imagenet_config, fake_ilsvrc_tars):
  shares = [_take(ip.create_train_iterator(imagenet_config, global_batch_size=4, seed=0,
                                           process_index=i, process_count=2), 3)
            for i in range(2)]
  for batches in shares:
    assert all(b["image"].shape == (2, 16, 16, 3) for b in batches)
  # 3 steps of 2 per process: together one pass over the 12 training images.
  labels = np.concatenate([b["label"] for batches in shares for b in batches])
  assert sorted(labels.tolist()) == sorted(label for _, label in fake_ilsvrc_tars.train)


@pytest.fixture(scope="module")
def corrupt_config(tmp_path_factory):
  """imagenet2012 prepared from tars with one truncated JPEG in train and one in validation."""
  tars = fake_ilsvrc.write_ilsvrc_tars(
      str(tmp_path_factory.mktemp("corrupt_manual")), num_classes=2, images_per_class=4,
      num_val=5, corrupt_train=1, corrupt_val=1, seed=1)
  config = ip.default_dataset_config(
      "imagenet2012", data_dir=str(tmp_path_factory.mktemp("corrupt_data")),
      manual_dir=tars.manual_dir, image_size=16)
  ip.prepare_dataset(config)  # The builder stores the corrupt bytes as they are.
  assert ip.get_dataset_info(config).num_train_examples == 8
  return config


def test_corrupt_jpeg_is_skipped_and_counted_in_eval(corrupt_config, caplog):
  with caplog.at_level(logging.WARNING):
    iterator = ip.create_eval_iterator(corrupt_config, global_batch_size=2, process_count=1)
    batches = list(iterator)
  assert len(batches) == 3
  assert iterator.num_skipped == 1
  assert sum(int(b["mask"].sum()) for b in batches) == 4
  assert "skipped 1 undecodable images" in caplog.text


def test_corrupt_jpeg_is_skipped_and_counted_in_train(corrupt_config, caplog):
  iterator = ip.create_train_iterator(corrupt_config, global_batch_size=4, seed=0)
  with caplog.at_level(logging.WARNING):
    batches = _take(iterator, 4)  # Two epochs of 2 steps.
  assert iterator.num_skipped == 2
  assert "skipped 1 undecodable images" in caplog.text
  for batch in batches:
    assert batch["image"].shape == (4, 16, 16, 3)
    assert np.all(np.abs(batch["image"]).max(axis=(1, 2, 3)) > 0)  # No blank substitutes.


def test_missing_tars_error_names_the_directory_and_both_files(tmp_path):
  manual_dir = tmp_path / "manual"
  config = ip.default_dataset_config("imagenet2012", data_dir=str(tmp_path / "data"),
                                     manual_dir=str(manual_dir))
  for call in (ip.prepare_dataset, ip.get_dataset_info):
    with pytest.raises(ip.DatasetError) as error:
      call(config)
    message = str(error.value)
    assert "\n" not in message
    for part in (str(manual_dir), "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
                 "python -m lct_flax.input_pipeline"):
      assert part in message


def test_prepare_cli_reports_missing_tars(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "lct_flax.input_pipeline", "--dataset=imagenet2012",
       f"--data_dir={tmp_path / 'data'}", f"--manual_dir={tmp_path / 'manual'}"],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode != 0
  assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in result.stderr
  assert "oneDNN custom operations" not in result.stderr   # TensorFlow's import banner


def test_preparing_says_what_it_does_in_two_lines_and_nothing_else(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "lct_flax.input_pipeline", "--dataset=sklearn_digits",
       f"--data_dir={tmp_path / 'data'}"], capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stderr.splitlines()
  assert len(lines) == 2, lines     # no tfds progress bars, size guesses or warnings
  assert re.fullmatch(r"\d\d:\d\d:\d\d Preparing sklearn_digits in .*data \(once\) \.\.\.",
                      lines[0])
  assert re.fullmatch(r"\d\d:\d\d:\d\d Prepared sklearn_digits in \d+ s: 360 test, 1437 train "
                      r"examples\.", lines[1])
  assert result.stdout.startswith("sklearn_digits ready in ")


def test_preparing_again_after_a_kill_removes_what_the_killed_one_left(tmp_path):
  unfinished = tmp_path / "data" / "sklearn_digits" / "incomplete.K1LLED_1.0.0"
  unfinished.mkdir(parents=True)
  (unfinished / "sklearn_digits-train.tfrecord-00000-of-00001").write_bytes(b"half")
  config = ip.default_dataset_config("sklearn_digits", data_dir=str(tmp_path / "data"))
  ip.prepare_dataset(config)
  assert sorted(os.listdir(tmp_path / "data" / "sklearn_digits")) == ["1.0.0"]
  assert ip.get_dataset_info(config).num_train_examples == 1437


def test_batch_size_must_divide_among_processes(imagenet_config):
  with pytest.raises(ip.DatasetError, match="multiple of the process count"):
    ip.create_eval_iterator(imagenet_config, global_batch_size=5, process_count=2)


def test_crop_window_follows_torchvision():
  seed = tf.constant([1, 2], tf.int64)
  # No candidate fits a full-area crop of a 10x40 image with aspect <= 4/3: centre fallback.
  window = ip.random_resized_crop_window(seed, 10, 40, (1.0, 1.0), (3 / 4, 4 / 3))
  np.testing.assert_array_equal(window, [0, 13, 10, 13])
  window = ip.random_resized_crop_window(seed, 40, 10, (1.0, 1.0), (3 / 4, 4 / 3))
  np.testing.assert_array_equal(window, [13, 0, 13, 10])
  areas = []
  for i, (height, width) in enumerate([(5, 35), (1, 1), (300, 200), (17, 9)] * 25):
    top, left, h, w = ip.random_resized_crop_window(
        tf.constant([3, i], tf.int64), height, width, (0.08, 1.0), (3 / 4, 4 / 3)).numpy()
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 < w
    if (height, width) == (300, 200):
      areas.append(h * w / (height * width))
      assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
  assert min(areas) < 0.3 and max(areas) > 0.7


def test_eval_preprocessing_resizes_shorter_side_then_centre_crops():
  # A 5x35 JPEG (the size of tfds mock images) still gives a full 16x16 crop.
  pixels = np.zeros((5, 35, 3), np.uint8)
  pixels[:, 17] = 255
  image = ip.preprocess_for_eval(tf.io.encode_jpeg(pixels), image_size=16, resize_size=18)
  assert image.shape == (16, 16, 3)
  # A PNG whose shorter side already has the resize size: a pure centre crop.
  pixels = np.random.default_rng(0).integers(0, 256, (18, 30, 3), dtype=np.uint8)
  image = ip.preprocess_for_eval(tf.io.encode_png(pixels), image_size=16, resize_size=18)
  np.testing.assert_array_equal(image, pixels[1:17, 7:23])


def test_prefetch_to_mesh_builds_global_arrays():
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  local = [{"image": np.full((2, 4, 4, 3), i, np.float32), "label": np.array([i, i], np.int32)}
           for i in range(5)]
  out = list(ip.prefetch_to_mesh(iter(local), sharding, size=2))
  assert len(out) == 5
  for i, batch in enumerate(out):
    assert isinstance(batch["image"], jax.Array) and batch["image"].sharding == sharding
    np.testing.assert_array_equal(batch["label"], [i, i])


# ---------------------------------------------------------------------------------------------
# Equality with the previous (float, host-normalised) implementation, tests/reference_preprocessing.

# The tolerance, 1e-3 in normalised units, in pixel levels (the smallest ImageNet std).
_LEVELS_1E3 = 1e-3 * min(ip.IMAGENET_STDDEV_RGB)


def _encode(pixels, kind):
  image = Image.fromarray(pixels)
  buffer = io.BytesIO()
  if kind == "png":
    image.save(buffer, format="PNG")
  elif kind == "png_grey":
    image.convert("L").save(buffer, format="PNG")
  elif kind == "png_rgba":
    image.convert("RGBA").save(buffer, format="PNG")
  elif kind == "jpeg_grey":
    image.convert("L").save(buffer, format="JPEG", quality=90)
  elif kind == "jpeg_cmyk":
    image.convert("CMYK").save(buffer, format="JPEG", quality=90)
  elif kind == "jpeg_progressive":
    image.save(buffer, format="JPEG", quality=90, progressive=True)
  elif kind == "jpeg_444":
    image.save(buffer, format="JPEG", quality=95, subsampling=0)
  else:
    image.save(buffer, format="JPEG", quality=90)  # 4:2:0 chroma, as most photos
  return buffer.getvalue()


# (height, width): smaller than the crops, extreme aspect ratios, odd and photo-like sizes.
_SHAPES = [(5, 35), (35, 5), (1, 300), (300, 1), (17, 9), (200, 30), (30, 200), (223, 224),
           (255, 257), (333, 500), (500, 375)]
_KINDS = ["jpeg", "jpeg_444", "jpeg_progressive", "jpeg_grey", "jpeg_cmyk", "png", "png_grey",
          "png_rgba"]
_EVERY_KIND_SHAPES = [(5, 35), (200, 30), (333, 500)]


@pytest.fixture(scope="module")
def odd_images():
  """(description, encoded bytes as a tf.string scalar): every kind at a few shapes, and every
  shape as a 4:2:0 JPEG."""
  rng = np.random.default_rng(0)
  images = []
  for height, width in _SHAPES:
    # Smooth structure plus pixel noise, as in photos: every tap of the filter matters.
    ys, xs = np.mgrid[0:height, 0:width]
    smooth = 128 + 90 * np.sin(ys[..., None] / 7.0 + xs[..., None] / 11.0 + np.arange(3))
    pixels = np.clip(smooth + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    for kind in _KINDS if (height, width) in _EVERY_KIND_SHAPES else ["jpeg"]:
      images.append((f"{kind} {height}x{width}", tf.constant(_encode(pixels, kind))))
  return images


def _rounded(reference):
  return np.floor(reference + 0.5)


def _assert_rounds_to(actual, reference, tie_tolerance, what):
  """uint8 ``actual`` is ``reference`` (float pixels) rounded half up, except where the reference
  lies within ``tie_tolerance`` of a tie, and is never more than half a level plus that away."""
  actual = actual.astype(np.float64)
  near_tie = np.abs(reference - np.floor(reference) - 0.5) < tie_tolerance
  wrong = (actual != _rounded(reference)) & ~near_tie
  assert not wrong.any(), f"{what}: {wrong.sum()} pixels differ from the reference rounded"
  assert np.abs(actual - reference).max() <= 0.5 + tie_tolerance, what


@pytest.mark.parametrize("image_size,resize_size", [(224, 256), (16, 18)])
def test_eval_output_equals_the_previous_implementation(odd_images, image_size, resize_size):
  new = tf.function(functools.partial(ip.preprocess_for_eval, image_size=image_size,
                                      resize_size=resize_size))
  old = tf.function(functools.partial(reference_preprocessing.preprocess_for_eval,
                                      image_size=image_size, resize_size=resize_size))
  for what, data in odd_images:
    actual = new(data).numpy()
    assert actual.shape == (image_size, image_size, 3) and actual.dtype == np.uint8
    # Within the 1e-3 (normalised) before rounding: the rounded values agree except
    # where the old float value lies within that distance of a tie.
    _assert_rounds_to(actual, old(data).numpy(), _LEVELS_1E3, what)


@pytest.mark.parametrize("image_size", [224, 16])
def test_train_output_equals_the_previous_implementation(odd_images, image_size):
  """Same windows and flips for the same seeds; the values equal the old float output rounded."""
  new = tf.function(functools.partial(ip.preprocess_for_train, image_size=image_size))
  old = tf.function(functools.partial(reference_preprocessing.preprocess_for_train,
                                      image_size=image_size))
  for i, (what, data) in enumerate(odd_images):
    for seed in ([i, 0], [i, 1], [i, 2]):
      seed = tf.constant(seed, tf.int64)
      # The same resampling arithmetic: equal before rounding up to float32 noise.
      _assert_rounds_to(new(data, seed).numpy(), old(data, seed).numpy(), 1e-4,
                        f"{what} seed {seed.numpy()}")


def test_eval_decodes_only_the_window_the_crop_reads():
  # A 500x375 (h x w) image: Resize(256) makes it 341x256 and the crop keeps rows 58..281 and
  # columns 16..239 of that, i.e. 224 / scale source pixels each way plus the filter's reach
  # (1 / scale on each side) and a one-pixel margin.
  window, (scale, translation) = ip._centre_crop_plan(500, 375, 224, 256)
  top, left, height, width = window.numpy()
  assert 0 < top and top + height < 500 and 0 < left and left + width < 375
  for size, s in ((height, 341 / 500), (width, 256 / 375)):
    assert 224 / s < size <= 224 / s + 2 / s + 3
  np.testing.assert_allclose(scale, [341 / 500, 256 / 375])
  np.testing.assert_allclose(translation, [top * 341 / 500 - 58, left * 256 / 375 - 16],
                             atol=1e-4)


_TORCHVISION_EVAL = """
import io, sys
import numpy as np
from PIL import Image
from torchvision import transforms
resize_crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
with np.load(sys.argv[1]) as images:
  out = {name: np.asarray(resize_crop(Image.open(io.BytesIO(images[name].tobytes()))
                                      .convert("RGB")))
         for name in images.files}
np.savez(sys.argv[2], **out)
"""


def test_eval_output_is_torchvisions_within_one_level(odd_images, tmp_path):
  """torchvision's Resize(256) + CenterCrop(224) of the PIL image, the paper's pipeline (run in its
  own process: torch and TensorFlow do not share one). PIL rounds to uint8 after each axis, so it
  may differ from the once-rounded result by one level."""
  if importlib.util.find_spec("torchvision") is None:  # not imported here: see above
    pytest.skip("torchvision is not installed")
  # PIL cannot resize a 1-pixel side (torchvision's rule gives the long side 256 * 1 / 300 = 0).
  images = {what: data for what, data in odd_images
            if "1x" not in what and not what.endswith("x1")}
  names = {f"image{i}": what for i, what in enumerate(images)}
  np.savez(tmp_path / "in.npz", **{name: np.frombuffer(images[what].numpy(), np.uint8)
                                   for name, what in names.items()})
  subprocess.run([sys.executable, "-c", _TORCHVISION_EVAL, str(tmp_path / "in.npz"),
                  str(tmp_path / "out.npz")], check=True, timeout=300)
  new = tf.function(functools.partial(ip.preprocess_for_eval, image_size=224, resize_size=256))
  with np.load(tmp_path / "out.npz") as expected:
    for name, what in names.items():
      actual = new(images[what]).numpy().astype(int)
      assert np.abs(actual - expected[name]).max() <= 1, what


def test_resize_equals_tf_image_resize_rounded():
  rng = np.random.default_rng(1)
  for height, width, size in [(40, 30, 16), (7, 9, 16), (1, 50, 16), (120, 16, 16), (3, 3, 5)]:
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    scale = tf.unstack(tf.constant(size, tf.float32) / tf.constant([height, width], tf.float32))
    reference = tf.image.resize(image, [size, size], antialias=True).numpy()
    _assert_rounds_to(resampling.resize(image, size, scale).numpy(), reference, 1e-4,
                      f"{height}x{width}")
    flipped = resampling.resize(image, size, scale, flip=tf.constant(True)).numpy()
    _assert_rounds_to(flipped, reference[:, ::-1], 1e-4, f"{height}x{width} flipped")
