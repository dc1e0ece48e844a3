"""The embedded offline dataset: scikit-learn's digits as the tfds builder ``sklearn_digits``."""

import numpy as np
from sklearn import datasets as sk_datasets
import tensorflow_datasets as tfds

from lct_flax import input_pipeline as ip
from lct_flax.datasets import sklearn_digits


def _examples(config, split):
  builder = tfds.builder("sklearn_digits", data_dir=config.data_dir)
  return list(tfds.as_numpy(builder.as_dataset(split=split)))


def test_split_rule_is_the_documented_one():
  indices = sklearn_digits.split_indices()
  permutation = np.random.RandomState(0).permutation(1797)
  np.testing.assert_array_equal(indices["test"], np.sort(permutation[:360]))
  np.testing.assert_array_equal(indices["train"], np.sort(permutation[360:]))


def test_builder_serves_all_1797_digits_in_the_fixed_split(digits_config):
  info = ip.get_dataset_info(digits_config)
  assert info == ip.DatasetInfo(num_classes=10, num_train_examples=1437, num_eval_examples=360)
  digits = sk_datasets.load_digits()
  seen = []
  for split, expected_indices in sklearn_digits.split_indices().items():
    examples = _examples(digits_config, split)
    indices = np.array([ex["index"] for ex in examples])
    np.testing.assert_array_equal(np.sort(indices), expected_indices)
    for ex in examples:
      assert ex["image"].shape == (8, 8, 3) and ex["image"].dtype == np.uint8
      expected = np.round(digits.images[ex["index"]] * 255 / 16).astype(np.uint8)
      for channel in range(3):
        np.testing.assert_array_equal(ex["image"][..., channel], expected)
      assert ex["label"] == digits.target[ex["index"]]
    seen += indices.tolist()
  assert sorted(seen) == list(range(1797))
  labels = np.array([ex["label"] for ex in _examples(digits_config, "train")])
  assert set(labels.tolist()) == set(range(10))


def test_digits_go_through_the_same_pipeline(digits_config):
  digits = sk_datasets.load_digits()
  test_indices = sklearn_digits.split_indices()["test"]
  batches = list(ip.create_eval_iterator(digits_config, global_batch_size=100, process_count=1))
  assert len(batches) == 4 and sum(int(b["mask"].sum()) for b in batches) == 360
  # With resize 8 and crop 8 eval is the identity: the images come back exactly, in some order.
  expected = {np.round(digits.images[i] * 255 / 16).astype(np.uint8).tobytes(): digits.target[i]
              for i in test_indices}
  for batch in batches:
    assert batch["image"].dtype == np.uint8
    for image, label, keep in zip(batch["image"], batch["label"], batch["mask"]):
      if keep:
        assert expected[image[..., 0].tobytes()] == label
  train = next(ip.create_train_iterator(digits_config, global_batch_size=32, seed=0))
  assert train["image"].shape == (32, 8, 8, 3) and train["image"].dtype == np.uint8
  assert ip.steps_per_epoch(digits_config, 32, process_count=1) == 1437 // 32
