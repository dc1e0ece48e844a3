"""Shared fixtures: tiny fake ILSVRC2012 tars prepared by the real tfds builder, sklearn_digits."""

import pytest

from lct_flax import input_pipeline
from lct_flax.datasets import fake_ilsvrc

# 3 classes x 4 train images, 9 validation images (not a multiple of the test batch sizes), sides
# 6..60 px so that some images are smaller than the 16 px crops the tests use.
FAKE_ILSVRC_SHAPE = dict(num_classes=3, images_per_class=4, num_val=9, size_range=(6, 60))


@pytest.fixture(scope="session")
def fake_ilsvrc_tars(tmp_path_factory):
  """A ``fake_ilsvrc.FakeIlsvrc``: ILSVRC2012 train/val tars in a temporary manual dir."""
  manual_dir = tmp_path_factory.mktemp("ilsvrc_manual")
  return fake_ilsvrc.write_ilsvrc_tars(str(manual_dir), **FAKE_ILSVRC_SHAPE)


@pytest.fixture(scope="session")
def _prepared_imagenet(fake_ilsvrc_tars, tmp_path_factory):
  config = input_pipeline.default_dataset_config(
      "imagenet2012", data_dir=str(tmp_path_factory.mktemp("imagenet_data")),
      manual_dir=fake_ilsvrc_tars.manual_dir, image_size=16, shuffle_buffer=32)
  input_pipeline.prepare_dataset(config)
  return config


@pytest.fixture
def imagenet_config(_prepared_imagenet):
  """Dataset config of the real imagenet2012 builder prepared from ``fake_ilsvrc_tars``.

  16 px crops (eval resize 18), shuffle buffer 32. A fresh copy per test: edit it freely.
  """
  return _prepared_imagenet.copy_and_resolve_references()


@pytest.fixture(scope="session")
def _prepared_digits(tmp_path_factory):
  config = input_pipeline.default_dataset_config(
      "sklearn_digits", data_dir=str(tmp_path_factory.mktemp("digits_data")), image_size=8,
      resize_size=8, shuffle_buffer=2048)
  input_pipeline.prepare_dataset(config)
  return config


@pytest.fixture
def digits_config(_prepared_digits):
  """Dataset config of ``sklearn_digits`` prepared in a temporary data_dir; 8 px, no resizing."""
  return _prepared_digits.copy_and_resolve_references()
