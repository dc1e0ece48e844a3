"""Workdirs and exports written by the stack this project used before (jax 0.10.2, flax 0.12.8,
orbax-checkpoint 0.12.8; `tests/data/jax_0_10_2/make.py`) restore, resume, export and compute on
the current one: the same variables bit for bit, the same logits and detections up to rounding."""

import os
import shutil

import numpy as np

from lct_flax import export
from lct_flax import pixels
from lct_flax.tasks.classification import TASK as CLASSIFICATION
from tiny import tiny_demo_config

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "jax_0_10_2")
EXPECTED = np.load(os.path.join(LEGACY, "expected.npz"))


def copy_workdir(name, tmp_path):
  """A writable copy of the legacy workdir `name`, without its export."""
  return str(shutil.copytree(os.path.join(LEGACY, name), tmp_path / name,
                             ignore=shutil.ignore_patterns("export")))


def assert_same_variables(export_a, export_b):
  a, b = export.load_variables(export_a), export.load_variables(export_b)
  assert a.keys() == b.keys() and len(a) > 50
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_classifier_export_computes_the_logits_it_did():
  model, variables, config = export.load(os.path.join(LEGACY, "classifier", "export"))
  images = pixels.normalize(EXPECTED["digit_inputs"], config.dataset.mean, config.dataset.std)
  np.testing.assert_allclose(model.apply(variables, images, train=False),
                             EXPECTED["classifier_logits"], rtol=1e-4, atol=1e-5)


def test_a_classifier_checkpoint_exports_as_it_did_and_resumes(digits_config, tmp_path):
  workdir = copy_workdir("classifier", tmp_path)
  assert_same_variables(export.export_workdir(workdir, str(tmp_path / "export")),
                        os.path.join(LEGACY, "classifier", "export"))
  result = CLASSIFICATION.train_and_evaluate(
      tiny_demo_config(digits_config.data_dir, num_train_steps=4), workdir)
  assert result["step"] == 4 and result["eval_count"] == 360
  old = export.load_variables(os.path.join(LEGACY, "classifier", "export"))
  new = export.load_variables(export.export_workdir(workdir, str(tmp_path / "export4")))
  assert old.keys() == new.keys()
  assert all(np.all(np.isfinite(new[name])) for name in new)
  assert not np.array_equal(old["params/fc/kernel"], new["params/fc/kernel"])


def matched(expected, found, index):
  """Whether detection `index` of `expected` is among `found`: same label, score within 1e-4, box
  within 1e-3 px (detections of near-equal scores may come in another order)."""
  same = ((found["labels"] == expected["labels"][index])
          & (np.abs(found["scores"] - expected["scores"][index]) < 1e-4)
          & np.all(np.abs(found["boxes"] - expected["boxes"][index]) < 1e-3, axis=-1))
  return bool(np.any(same))


def test_a_detector_export_gives_the_detections_it_did():
  model, variables, _ = export.load(os.path.join(LEGACY, "detector", "export"))
  images = EXPECTED["shape_inputs"]
  detections = model.apply(variables, images, np.array([images.shape[1:3]], np.int32))
  valid = np.asarray(detections.valid[0])
  found = {k: np.asarray(getattr(detections, k))[0][valid] for k in ("boxes", "scores", "labels")}
  keep = EXPECTED["detector_valid"][0]
  expected = {k: EXPECTED[f"detector_{k}"][0][keep] for k in ("boxes", "scores", "labels")}
  assert len(found["scores"]) == len(expected["scores"]) > 10
  assert all(matched(expected, found, i) for i in range(len(expected["scores"])))


def test_a_detector_checkpoint_exports_as_it_did(tmp_path):
  workdir = copy_workdir("detector", tmp_path)
  assert_same_variables(export.export_workdir(workdir, str(tmp_path / "export")),
                        os.path.join(LEGACY, "detector", "export"))
