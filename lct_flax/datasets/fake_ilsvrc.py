"""Writes small synthetic ``ILSVRC2012_img_{train,val}.tar`` files in the real ImageNet layout.

Used by the tests and the input-pipeline benchmark to run the REAL tfds ``imagenet2012`` builder
offline. The layout is what the builder reads:

* ``ILSVRC2012_img_train.tar`` holds one ``nXXXXXXXX.tar`` per class, each holding
  ``nXXXXXXXX_N.JPEG`` files;
* ``ILSVRC2012_img_val.tar`` holds flat ``ILSVRC2012_val_%08d.JPEG`` files. The builder labels them
  with the lines of its bundled ``validation_labels.txt`` in sorted file-name order, so the
  ``i``-th validation image gets label line ``i``.

Every image is a flat colour that identifies its class (``FakeIlsvrc.colours``) plus a smooth
random pattern, so crops differ from one another while staying recognisable.
"""

import dataclasses
import io
import itertools
import os
import tarfile

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"

_PATTERN_AMPLITUDE = 20.0
_PALETTE = np.array(list(itertools.product((30, 128, 225), repeat=3)), np.float64)


def _bundled_lines(relative_path):
  path = tfds.core.tfds_path(relative_path)
  return path.read_text().strip().splitlines()


def imagenet_synsets():
  """The 1000 synsets in label order, from the builder's bundled ``labels.txt``."""
  return _bundled_lines("datasets/imagenet2012/labels.txt")


def validation_synsets():
  """The synset of each validation image in sorted file-name order (``validation_labels.txt``)."""
  return _bundled_lines("datasets/imagenet2012/validation_labels.txt")


@dataclasses.dataclass(frozen=True)
class FakeIlsvrc:
  """What was written.

  ``train``/``val``: ``(file_name, label)`` per image; ``corrupt``: names of undecodable files;
  ``colours``: label -> RGB base colour (float64, 0..255), at least 97 apart for up to 27 classes.
  """

  manual_dir: str
  train: tuple
  val: tuple
  corrupt: frozenset
  colours: dict


def synthetic_image(rng, colour, height, width, noise_std=0.0):
  """uint8 (height, width, 3): ``colour`` + a smooth random pattern of amplitude 20 + noise.

  ``noise_std`` > 0 adds Gaussian pixel noise, which makes JPEG files about as large as photos.
  """
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  fy, fx = rng.uniform(0.05, 0.3, size=2)
  phase = rng.uniform(0.0, 2.0 * np.pi, size=3)
  pattern = np.sin(fy * ys[..., None] + fx * xs[..., None] + phase)
  pixels = colour + _PATTERN_AMPLITUDE * pattern
  if noise_std:
    pixels = pixels + rng.normal(0.0, noise_std, size=pixels.shape)
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _jpeg_bytes(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _add_bytes(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _image_bytes(rng, colour, size_range, noise_std, corrupt):
  height, width = rng.integers(size_range[0], size_range[1] + 1, size=2)
  data = _jpeg_bytes(synthetic_image(rng, colour, height, width, noise_std))
  # A truncated JPEG: the header (and so the shape) reads fine, decoding the pixels fails.
  return data[: len(data) // 2] if corrupt else data


def _write_val_tar(path, rng, val_synsets, label_of, colours, size_range, noise_std, *,
                   corrupt_from, corrupt):
  """The validation tar: ILSVRC2012_val_<n>.JPEG of `val_synsets`, truncated from image index
  `corrupt_from` on (their names added to `corrupt`); returns [(name, label), ...]."""
  val = []
  with tarfile.open(path, "w") as tar:
    for i, synset in enumerate(val_synsets):
      name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
      is_corrupt = i >= corrupt_from
      data = _image_bytes(rng, colours[label_of[synset]], size_range, noise_std, is_corrupt)
      _add_bytes(tar, name, data)
      val.append((name, label_of[synset]))
      if is_corrupt:
        corrupt.add(name)
  return val


def write_ilsvrc_tars(
    manual_dir,
    *,
    num_classes=3,
    images_per_class=4,
    num_val=10,
    size_range=(20, 80),
    noise_std=0.0,
    corrupt_train=0,
    corrupt_val=0,
    seed=0,
):
  """Writes both tars into ``manual_dir`` and returns a ``FakeIlsvrc`` describing them.

  The train classes are the first ``num_classes`` distinct synsets of the validation labels, so
  that train and validation share classes. Image heights and widths are drawn independently from
  ``size_range`` (inclusive); ``noise_std`` as in ``synthetic_image``. Colours go to classes in
  order of first use (train classes, then validation labels), cycling through 27 colours. The
  last ``corrupt_train`` images of the last class and the last ``corrupt_val`` validation images
  are truncated JPEGs.
  """
  os.makedirs(manual_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  synsets = imagenet_synsets()
  label_of = {synset: label for label, synset in enumerate(synsets)}
  val_synsets = validation_synsets()[:num_val]
  classes = list(dict.fromkeys(validation_synsets()))[:num_classes]
  used = dict.fromkeys(label_of[s] for s in classes + val_synsets)
  colours = {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(used)}

  train, corrupt = [], set()
  with tarfile.open(os.path.join(manual_dir, TRAIN_TAR), "w") as outer:
    for class_number, synset in enumerate(classes):
      inner_buffer = io.BytesIO()
      with tarfile.open(fileobj=inner_buffer, mode="w") as inner:
        for n in range(images_per_class):
          name = f"{synset}_{n}.JPEG"
          is_corrupt = (class_number == num_classes - 1
                        and n >= images_per_class - corrupt_train)
          data = _image_bytes(rng, colours[label_of[synset]], size_range, noise_std, is_corrupt)
          _add_bytes(inner, name, data)
          train.append((name, label_of[synset]))
          if is_corrupt:
            corrupt.add(name)
      _add_bytes(outer, f"{synset}.tar", inner_buffer.getvalue())

  val = _write_val_tar(os.path.join(manual_dir, VAL_TAR), rng, val_synsets, label_of, colours,
                       size_range, noise_std, corrupt_from=num_val - corrupt_val, corrupt=corrupt)
  return FakeIlsvrc(manual_dir, tuple(train), tuple(val), frozenset(corrupt), colours)
