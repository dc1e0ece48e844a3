"""Detector training on the shared loop: a tiny LCT Faster R-CNN on the generated shapes COCO
layout, through the real builder, pipeline, loop, checkpoints and COCOeval: one compile per
canvas, finite losses, losses that descend on a batch, exact resume mid-epoch, results JSON, and
the refusals."""

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs.detection import shapes_demo
from lct_flax import loop
from lct_flax.detection import data
from lct_flax.tasks.detection import TASK as DETECTION
from lct_flax.detection import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


def tiny_config(dataset, **overrides):
  """configs/detection/shapes_demo.py shrunk: width 1/8, FPN 16, 80x64 images, batch 2."""
  config = shapes_demo.get_config()
  config.dataset = dataset
  config.dataset.img_scale = (80, 64)
  config.dataset.canvases = ((64, 96), (96, 64))
  m = config.model
  m.width, m.fpn_channels, m.fc_hidden = 0.125, 16, 32
  m.rpn_proposals_train, m.rpn_proposals_test, m.rcnn_samples, m.max_candidates = 64, 32, 32, 64
  config.batch_size = 2
  config.num_train_steps = STEPS
  config.warmup_steps = 2
  config.learning_rate = 0.02
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1000
  config.eval_every_epochs = 0
  for key, value in overrides.items():
    config[key] = value
  return config


def train(config, workdir):
  """train_and_evaluate through the loop, keeping the task it built."""
  built = []

  def make_task():
    built.append(DETECTION.training(config, str(workdir)))
    return built[-1]

  DETECTION.check_config(config)
  return loop.run(make_task, str(workdir)), built[0]


def trained(config, tmp_path_factory, name):
  """(config, workdir, result, task) of a run of `config` in a fresh workdir called `name`."""
  workdir = tmp_path_factory.mktemp(name)
  result, task = train(config, workdir)
  return config, workdir, result, task


def scalars(workdir, name):
  """The TensorBoard scalar `name` of every logged step."""
  import tensorflow as tf
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
  acc.Reload()
  return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(name)]


def train_losses(workdir):
  return scalars(workdir, "train_loss")


def descent(config, task, *, parts, trainable, learning_rate, num_steps):
  """The sum of the detector's loss `parts` on the first training batch (one sampling key), from
  the task's initial state, before each of `num_steps` plain gradient-descent steps of the
  parameters under `trainable` (the rest held). Nothing those parameters feed decides which
  anchors or RoIs are sampled, so the loss is a smooth function of them and each small step lowers
  it by far more than float rounding moves it on any CPU (a whole training run, by contrast, is
  chaotic)."""
  model = DETECTION.create_model(config, task.identity["num_classes"])
  batch = next(iter(data.create_train_iterator(
      config.dataset, global_batch_size=config.batch_size, seed=config.seed,
      with_masks=model.settings.with_masks)))
  batch = steps.device_batch(batch, steps.train_keys(model))
  state = jax.device_get(task.init_state())
  held = {k: v for k, v in state.params.items() if k not in trainable}

  def loss(free):
    (_, metrics), _ = model.apply({"params": {**held, **free}, "batch_stats": state.batch_stats},
                                  batch, jax.random.PRNGKey(0), method="losses",
                                  mutable=["batch_stats"])
    return sum(metrics[part] for part in parts)

  loss_and_grad = jax.jit(jax.value_and_grad(loss))
  free = {k: state.params[k] for k in trainable}
  values = []
  for _ in range(num_steps):
    value, grads = loss_and_grad(free)
    values.append(float(value))
    free = jax.tree.map(lambda p, g: p - learning_rate * g, free, grads)
  return np.array(values)


def assert_descends(values, ratio):
  """Every step lower than the one before, and the last below `ratio` of the first."""
  assert np.all(np.diff(values) < 0), values
  assert values[-1] < ratio * values[0], values


@pytest.fixture(scope="module")
def straight(_prepared_shapes, tmp_path_factory):
  return trained(tiny_config(_prepared_shapes.copy_and_resolve_references()), tmp_path_factory,
                 "detection_straight")


def test_one_compile_per_canvas_finite_losses_and_coco_eval(straight):
  config, workdir, result, task = straight
  batches = data.create_train_iterator(config.dataset, global_batch_size=config.batch_size,
                                       seed=config.seed)
  canvases = {batch["image"].shape[1:3] for _, batch in zip(range(STEPS), batches)}
  assert canvases == {(64, 96), (96, 64)}
  assert task.train_step._cache_size() == len(canvases)
  losses = train_losses(workdir)
  assert len(losses) == STEPS and np.all(np.isfinite(losses))
  assert result["step"] == STEPS
  for column in ("AP", "AP50", "AP75", "APs", "APm"):
    assert 0.0 <= result[f"eval_{column}"] <= 1.0
  results = json.load(open(workdir / f"detections_{STEPS}.json"))
  val_ids = {image["id"] for image in data.read_annotations(config.dataset)["images"]}
  assert results and {r["image_id"] for r in results} <= val_ids
  assert {r["category_id"] for r in results} <= {2, 5, 9, 14}
  assert all(len(r["bbox"]) == 4 and r["bbox"][2] > 0 and 0.05 < r["score"] <= 1
             for r in results)


@pytest.mark.parametrize("parts,trainable,learning_rate,ratio", [
    (("rpn_cls", "rpn_box"), ("backbone", "neck", "rpn_head"), 0.05, 0.95),
    (("stage0_cls", "stage0_box"), ("box_heads_0",), 0.02, 0.7)])
def test_rpn_and_box_head_losses_descend_on_a_batch(straight, parts, trainable, learning_rate,
                                                    ratio):
  config, _, _, task = straight
  assert_descends(descent(config, task, parts=parts, trainable=trainable,
                          learning_rate=learning_rate, num_steps=12), ratio)


def test_resume_mid_epoch_equals_the_straight_run(straight, tmp_path):
  config, straight_workdir, _, _ = straight
  first = tiny_config(config.dataset, num_train_steps=5)   # 11 steps per epoch
  train(first, tmp_path)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]
  result, _ = train(config, tmp_path)
  assert result["step"] == STEPS
  a = traverse_util.flatten_dict(jax.device_get(
      DETECTION.restore_state(config, str(straight_workdir)).variables))
  b = traverse_util.flatten_dict(jax.device_get(
      DETECTION.restore_state(config, str(tmp_path)).variables))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
  np.testing.assert_array_equal(train_losses(tmp_path)[-STEPS + 5:],
                                train_losses(straight_workdir)[5:])


def test_resuming_under_another_box_convention_is_refused_naming_both(straight, tmp_path):
  config, workdir, _, _ = straight
  copy = shutil.copytree(workdir, tmp_path / "run")
  before = {name: (copy / name).read_bytes() for name in ("config.json", "model.json")}
  changed = config.copy_and_resolve_references()
  changed.model.convention = changed.dataset.box_convention = "torchvision"
  with pytest.raises(loop.TrainingError, match=re.escape(
      "model.convention: 'mmdet_v1' in the workdir vs 'torchvision' now")):
    train(changed, copy)
  assert {name: (copy / name).read_bytes() for name in before} == before


def run_train_py(workdir, *flags):
  return subprocess.run([sys.executable, os.path.join(REPO, "train.py"),
                         "--config=configs/detection/shapes_demo.py", f"--workdir={workdir}",
                         *flags], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags,message", [
    (["--config.model.detector=retinanet"],
     "error: config.model.detector='retinanet' is not allowed: it must be one of 'faster_rcnn', "
     "'cascade_rcnn', 'mask_rcnn', 'cascade_mask_rcnn'."),
    (["--config.dataset.box_convention=torchvision"],
     "error: config.dataset.box_convention='torchvision' differs from "
     "config.model.convention='mmdet_v1'; set both to the same value."),
])
def test_bad_detection_configs_are_refused_in_one_line(flags, message, tmp_path):
  result = run_train_py(tmp_path / "run", *flags)
  assert result.returncode != 0
  assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [message]
  assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_canvas_smaller_than_the_resized_images_is_refused(_prepared_shapes, tmp_path):
  result = run_train_py(tmp_path / "run", f"--config.dataset.data_dir={_prepared_shapes.data_dir}",
                        f"--config.dataset.manual_dir={_prepared_shapes.manual_dir}",
                        "--config.dataset.canvases=((96, 160), (160, 96))")
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode != 0 and len(errors) == 1, result.stderr[-2000:]
  assert "canvas" in errors[0] and "Traceback" not in result.stderr


def test_export_of_a_detector_evaluates_as_training_did(straight, tmp_path):
  from lct_flax import evaluate
  from lct_flax import export
  from lct_flax.detection import detector as detector_lib
  _, workdir, result, _ = straight
  output = export.export_workdir(str(workdir), str(tmp_path / "export"))
  model, variables, config = export.load(output)
  assert isinstance(model, detector_lib.TwoStageDetector)
  assert config.model.task == "detection" and config.source.step == STEPS
  exported = sorted(os.listdir(output))
  evaluated = evaluate.evaluate_export(output, batch_size=2, results_dir=str(tmp_path / "out"))
  for column in ("AP", "AP50", "AP75", "APs", "APm"):
    assert evaluated[column] == pytest.approx(result[f"eval_{column}"], abs=1e-9)
  assert evaluated["results"] == str(tmp_path / "out" / "detections_validation.json")
  assert json.load(open(evaluated["results"])) == json.load(
      open(workdir / f"detections_{STEPS}.json"))
  assert sorted(os.listdir(output)) == exported   # a read-only export can be evaluated


def test_pairs_beyond_max_candidates_are_reported_in_one_warning(straight, tmp_path, caplog):
  from lct_flax import export
  from lct_flax.detection import evaluation
  _, workdir, _, _ = straight
  output = export.export_workdir(str(workdir), str(tmp_path / "export"))
  model, variables, config = export.load(output)
  capped = model.clone(settings=dataclasses.replace(model.settings, max_candidates=2))
  with caplog.at_level(logging.WARNING):
    evaluation.evaluate_export(output, capped, variables, config, batch_size=2)
  lines = [r.getMessage() for r in caplog.records if "max_candidates" in r.getMessage()]
  assert len(lines) == 1, lines
  count, total = (int(v) for v in re.match(r"(\d+) of (\d+) images", lines[0]).groups())
  assert total == data.get_dataset_info(config.dataset).num_eval_images and 0 < count <= total
  assert "than model.max_candidates=2 (up to " in lines[0]
  evaluation.warn_about_capped_candidates(np.array([3, 64, 7]), 64)   # at the cap: all seen
  assert len([r for r in caplog.records if "max_candidates" in r.getMessage()]) == 1
