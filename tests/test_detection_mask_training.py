"""Mask R-CNN on the shared loop (issue 14): a tiny LCT Mask R-CNN on the generated shapes COCO
layout through the real builder, the pipeline's bit-packed instance masks, the loop, checkpoints
and COCOeval bbox + segm: one compile per canvas, finite losses, a mask loss that descends,
exact resume mid-epoch, and an export that evaluates (box and mask AP) as training did."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from lct_flax.detection import data
from lct_flax.tasks.detection import TASK as DETECTION
from test_detection_training import (assert_descends, descent, scalars, tiny_config, train,
                                     train_losses, trained)

STEPS = 12


def tiny_mask_config(dataset, **overrides):
  """test_detection_training's tiny detector as a Mask R-CNN with a 16-channel mask head, at lr
  0.04 with 64 RoIs per image (up to 16 positives for the mask head)."""
  config = tiny_config(dataset, **{"num_train_steps": STEPS, "learning_rate": 0.04, **overrides})
  config.model.detector = "mask_rcnn"
  config.model.mask_hidden = 16
  config.model.rcnn_samples = 64
  return config


@pytest.fixture(scope="module")
def mask_run(_prepared_shapes, tmp_path_factory):
  return trained(tiny_mask_config(_prepared_shapes.copy_and_resolve_references()),
                 tmp_path_factory, "mask_straight")


def test_mask_rcnn_compiles_once_per_canvas_trains_finite_and_scores_masks(mask_run):
  config, workdir, result, task = mask_run
  batches = [batch for _, batch in zip(range(STEPS), data.create_train_iterator(
      config.dataset, global_batch_size=config.batch_size, seed=config.seed, with_masks=True))]
  assert {b["image"].shape[1:3] for b in batches} == {(64, 96), (96, 64)}
  assert task.train_step._cache_size() == 2
  for b in batches:   # bit-packed masks: (B, M, Hc, Wc / 8)
    assert b["masks"].dtype == np.uint8 and b["masks"].shape == (
        2, config.dataset.max_instances, *b["image"].shape[1:2], b["image"].shape[2] // 8)
  mask_losses = scalars(workdir, "train_stage0_mask")
  assert len(mask_losses) == STEPS and np.all(np.isfinite(mask_losses))
  assert np.all(np.isfinite(train_losses(workdir)))
  for column in ("AP", "AP50", "APs", "APm"):
    assert 0.0 <= result[f"eval_{column}"] <= 1.0
    assert 0.0 <= result[f"eval_segm_{column}"] <= 1.0
  boxes = json.load(open(workdir / f"detections_{STEPS}.json"))
  masks = json.load(open(workdir / f"detections_{STEPS}.segm.json"))
  assert masks and len(masks) == len(boxes)
  images = {i["id"]: i for i in data.read_annotations(config.dataset)["images"]}
  for box, mask in zip(boxes, masks):   # mmdet v1's segm results: the box's fields and an RLE
    assert {k: mask[k] for k in box} == box
    image = images[mask["image_id"]]
    assert mask["segmentation"]["size"] == [image["height"], image["width"]]
    assert isinstance(mask["segmentation"]["counts"], str)


def test_mask_head_loss_descends_on_a_batch(mask_run):
  config, _, _, task = mask_run
  assert_descends(descent(config, task, parts=("stage0_mask",), trainable=("mask_heads_0",),
                          learning_rate=0.1, num_steps=30), 0.85)


def test_mask_rcnn_resumes_mid_epoch_exactly(mask_run, tmp_path):
  config, straight_workdir, _, _ = mask_run
  train(tiny_mask_config(config.dataset, num_train_steps=5), tmp_path)
  result, _ = train(config, tmp_path)
  assert result["step"] == STEPS
  a, b = (traverse_util.flatten_dict(jax.device_get(
      DETECTION.restore_state(config, str(w)).variables)) for w in (straight_workdir,
                                                                        tmp_path))
  assert a.keys() == b.keys() and any("mask_heads_0" in key for key in a)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
  np.testing.assert_array_equal(scalars(tmp_path, "train_stage0_mask")[-STEPS + 5:],
                                scalars(straight_workdir, "train_stage0_mask")[5:])


def test_mask_rcnn_export_evaluates_box_and_mask_ap_as_training_did(mask_run, tmp_path):
  from lct_flax import evaluate
  from lct_flax import export
  from lct_flax.detection import evaluation
  _, workdir, result, _ = mask_run
  output = export.export_workdir(str(workdir), str(tmp_path / "export"))
  model, _, config = export.load(output)
  assert model.settings.with_masks and config.model.detector == "mask_rcnn"
  evaluated = evaluate.evaluate_export(output, batch_size=2)
  for column in ("AP", "AP50", "AP75", "APs", "APm"):
    assert evaluated[column] == pytest.approx(result[f"eval_{column}"], abs=1e-9)
    assert evaluated[f"segm_{column}"] == pytest.approx(result[f"eval_segm_{column}"], abs=1e-9)
  line = evaluation.format_result(evaluated)
  assert "  bbox  AP " in line and "  |  segm  AP " in line
  assert json.load(open(evaluated["results"].replace(".json", ".segm.json"))) == json.load(
      open(workdir / f"detections_{STEPS}.segm.json"))
