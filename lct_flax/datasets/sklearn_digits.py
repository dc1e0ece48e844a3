"""``sklearn_digits``: scikit-learn's bundled handwritten digits as a tfds dataset.

The embedded offline dataset of this project: ``sklearn.datasets.load_digits`` ships inside the
scikit-learn wheel (1,797 real 8x8 grey images, values 0..16, 10 classes), so preparing it needs no
network and takes a few seconds. Images are stored as uint8 RGB PNGs so that they run through
exactly the same decode/crop/resize code as ImageNet's JPEGs.
"""

import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TEST_EXAMPLES = 360
SPLIT_SEED = 0


def split_indices():
  """Returns ``{"train": idx, "test": idx}``: indices into ``load_digits()``, each ascending.

  Rule: ``p = np.random.RandomState(0).permutation(1797)``; ``p[:360]`` is the test split
  (360 examples) and ``p[360:]`` the train split (1,437 examples). ``RandomState`` is numpy's
  frozen legacy generator, so the split is the same on every numpy version.
  """
  permutation = np.random.RandomState(SPLIT_SEED).permutation(NUM_EXAMPLES)
  return {
      "train": np.sort(permutation[NUM_TEST_EXAMPLES:]),
      "test": np.sort(permutation[:NUM_TEST_EXAMPLES]),
  }


def to_rgb_uint8(grey_0_16):
  """Maps an 8x8 image with values 0..16 to uint8 RGB: ``round(v * 255 / 16)`` on 3 channels."""
  grey = np.round(np.asarray(grey_0_16, np.float64) * (255.0 / 16.0)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def _png_bytes(rgb_uint8):
  """Lossless PNG encoding with PIL (much faster here than tfds' per-image TF graph)."""
  buffer = io.BytesIO()
  Image.fromarray(rgb_uint8).save(buffer, format="PNG")
  return buffer.getvalue()


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits (UCI optical digits test set), 8x8, 10 classes.

  Splits (fixed, see ``split_indices``): ``train`` 1,437 and ``test`` 360 examples, chosen by
  ``np.random.RandomState(0).permutation(1797)`` (first 360 -> test); 1,797 in all.

  Features: ``image`` uint8 (8, 8, 3) PNG with ``round(v * 255 / 16)`` replicated to RGB;
  ``label`` 0..9; ``index``, the example's row in ``sklearn.datasets.load_digits()``.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self):
    return self.dataset_info_from_configs(
        description="scikit-learn's bundled 8x8 handwritten digits as RGB PNGs.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=10),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is bundled with scikit-learn.
    return {
        name: self._generate_examples(indices) for name, indices in split_indices().items()
    }

  def _generate_examples(self, indices):
    from sklearn import datasets  # Imported here: only preparing needs scikit-learn.

    digits = datasets.load_digits()
    for index in indices:
      yield int(index), {
          "image": _png_bytes(to_rgb_uint8(digits.images[index])),
          "label": int(digits.target[index]),
          "index": int(index),
      }
