"""Input pipeline through the real tfds imagenet2012 builder, prepared from tiny fake ILSVRC tars."""

import collections
import hashlib
import itertools
import logging
import os
import subprocess
import sys

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import pytest
import tensorflow as tf

from lct_flax import input_pipeline as ip
from lct_flax.datasets import fake_ilsvrc

MEAN = np.array(ip.IMAGENET_MEAN_RGB, np.float32)
STD = np.array(ip.IMAGENET_STDDEV_RGB, np.float32)


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _denormalize(images):
  return images * STD + MEAN


def _nearest_class(image, colours):
  """The label whose base colour is nearest to the image's mean colour."""
  mean_colour = _denormalize(image).mean(axis=(0, 1))
  return min(colours, key=lambda label: np.linalg.norm(colours[label] - mean_colour))


def _fingerprint(image):
  return hashlib.sha1(np.round(image, 3).tobytes()).hexdigest()


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
  lowest, highest = (0 - MEAN) / STD, (255 - MEAN) / STD
  labels = []
  for batch in batches:
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert np.all(batch["image"] >= lowest - 1e-4) and np.all(batch["image"] <= highest + 1e-4)
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
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
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
  differs = np.abs(first - second).max(axis=(1, 2, 3)) > 1e-3
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
  np.testing.assert_allclose(_denormalize(image.numpy()), pixels[1:17, 7:23], atol=1e-3)


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
