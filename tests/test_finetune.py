"""Fine-tuning: init_from (exports, torch-layout .safetensors/.npz), frozen stages and BatchNorm,
C2-C5 features, safetensors in and out, and the refusals."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lct_flax import export_format
from lct_flax import freezing
from lct_flax import interop
from lct_flax import loop
from lct_flax import models
from lct_flax import pretrained
from lct_flax.tasks.classification import TASK as CLASSIFICATION
from tiny import tiny_demo_config, tiny_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WIDTH = 0.125


def torch_layout_shapes(attention=None, num_classes=1000, **kwargs):
  """Torch name -> shape of a tiny (width 1/8, small stem) ResNet-18 in torchvision's layout."""
  model = models.create_model("resnet18", attention=attention, num_classes=num_classes,
                              width=TINY_WIDTH, small_stem=True, **kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  return {name: value.shape for name, value in interop.to_torch_state_dict(
      jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)).items()}


def random_state_dict(shapes, seed=0):
  """Random tensors by name, scaled as a trained network's are (He-scaled weights, BatchNorm
  scales near 1 and positive variances), num_batches_tracked as torch has it."""
  rng = np.random.default_rng(seed)
  state_dict = {}
  for name, shape in shapes.items():
    if name.endswith("num_batches_tracked"):
      state_dict[name] = np.array(7, np.int64)
    elif name.endswith("running_var"):
      state_dict[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif len(shape) >= 2:
      fan_in = int(np.prod(shape[1:]))
      state_dict[name] = (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    elif name.endswith("weight"):
      state_dict[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      state_dict[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
  return state_dict


@pytest.fixture
def digits_dir(digits_config):
  return digits_config.data_dir


def tiny_finetune_config(digits_dir, **overrides):
  return tiny_demo_config(digits_dir, **overrides)


def torch_view(state):
  """Torch name -> NumPy array of a TrainState's variables."""
  return interop.to_torch_state_dict(jax.device_get(state.variables))


# ---------------------------------------------------------------------------------------------
# Loading.


def test_plain_torchvision_state_dict_loads_into_lct_resnet_with_a_new_head(digits_dir, tmp_path,
                                                                           caplog):
  source = random_state_dict(torch_layout_shapes(num_classes=1000))
  path = str(tmp_path / "resnet18.safetensors")
  interop.write_state_dict_file(path, source)
  config = tiny_finetune_config(digits_dir, num_train_steps=1, learning_rate=0.0,
                                weight_decay=0.0, momentum=0.0, init_from=path)
  training = CLASSIFICATION.training(config, str(tmp_path / "run"))
  state = training.init_state()
  fresh = torch_view(state)
  with caplog.at_level(logging.INFO):
    state, record = training.initialize(state)
  loaded = torch_view(state)
  convs_and_norms = [n for n in source if not n.startswith("fc.")
                     and not n.endswith("num_batches_tracked")]
  assert any(n.endswith("running_var") for n in convs_and_norms)
  for name in convs_and_norms:
    np.testing.assert_array_equal(loaded[name], source[name], err_msg=name)
  lct = [n for n in loaded if ".lct." in n]
  assert len(lct) == 16                                       # 8 blocks x (w, b)
  for name in lct:
    np.testing.assert_array_equal(loaded[name], 0.0 if name.endswith(".w") else 1.0)
  assert loaded["fc.weight"].shape == (10, 64)
  np.testing.assert_array_equal(loaded["fc.weight"], fresh["fc.weight"])
  assert record["init_from_source"]["loaded"] == len(convs_and_norms)
  assert set(record["init_from_source"]["initialised_fresh"]) == set(lct + ["fc.bias",
                                                                            "fc.weight"])
  table = next(r.getMessage() for r in caplog.records if "init_from" in r.getMessage())
  assert f"| loaded | {len(convs_and_norms)} |" in table
  assert "| initialised fresh | 18 | fc.bias, fc.weight, layer1.0.lct.b," in table
  assert "| skipped (init_skip) | 0 |" in table
  import hashlib
  assert record["init_from_source"]["sha256"] == hashlib.sha256(
      open(path, "rb").read()).hexdigest()


def test_full_size_torchvision_resnet18_fits_lct_resnet18():
  torchvision = pytest.importorskip("torchvision")
  source = {k: v.numpy() for k, v in torchvision.models.resnet18().state_dict().items()}
  model = models.create_model("resnet18", attention="lct", num_classes=10, groups=32)
  target = traverse_util.flatten_dict(jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
  plan = pretrained.plan_load(target, source)
  assert len(plan.arrays) == len([n for n in source if not n.startswith("fc.")
                                  and not n.endswith("num_batches_tracked")])
  assert sorted(plan.fresh) == sorted(["fc.weight", "fc.bias"] + [
      f"layer{s}.{b}.lct.{p}" for s in range(1, 5) for b in range(2) for p in "wb"])


def test_init_skip_leaves_named_tensors_out(tmp_path):
  shapes = torch_layout_shapes(num_classes=10)
  source = random_state_dict(shapes)
  source["aux_head.weight"] = np.zeros((3, 3), np.float32)
  model = models.create_model("resnet18", num_classes=10, width=TINY_WIDTH, small_stem=True)
  target = traverse_util.flatten_dict(jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))))
  plan = pretrained.plan_load(target, source, skip=("aux_head.*", "fc.*", "layer4.1.conv2.*"))
  assert plan.skipped == ["aux_head.weight", "fc.bias", "fc.weight", "layer4.1.conv2.weight"]
  assert sorted(plan.fresh) == ["fc.bias", "fc.weight", "layer4.1.conv2.weight"]
  assert ("params", "layer4_1", "conv2", "kernel") not in plan.arrays
  assert ("params", "layer4_1", "conv1", "kernel") in plan.arrays


@pytest.mark.parametrize("damage,message", [
    ("unknown", "init_from: extra.weight has no place in the model; name them in "
                "--config.init_skip (fnmatch patterns such as 'fc.*') to leave them out, or use a "
                "source that fits."),
    ("shape", "init_from: layer2.0.conv1.weight has shape (16, 8, 5, 5), the model needs "
              "(16, 8, 3, 3); name them in"),
    ("missing", "init_from: layer3.1.bn2.running_mean is missing from the source; name them in"),
])
def test_sources_that_do_not_fit_are_refused_by_name(damage, message):
  source = random_state_dict(torch_layout_shapes(num_classes=10))
  if damage == "unknown":
    source["extra.weight"] = np.zeros(3, np.float32)
  elif damage == "shape":
    source["layer2.0.conv1.weight"] = np.zeros((16, 8, 5, 5), np.float32)
  else:
    del source["layer3.1.bn2.running_mean"]
  model = models.create_model("resnet18", num_classes=10, width=TINY_WIDTH, small_stem=True)
  target = traverse_util.flatten_dict(jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))))
  with pytest.raises(ValueError) as error:
    pretrained.plan_load(target, source)
  assert "\n" not in str(error.value) and str(error.value).startswith(message)


def test_missing_and_damaged_files_give_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"^\S+/nope.safetensors does not exist; give a "):
    pretrained.read_source(str(tmp_path / "nope.safetensors"))
  damaged = tmp_path / "damaged.safetensors"
  interop.write_state_dict_file(str(damaged), {"a": np.ones(1000, np.float32)})
  damaged.write_bytes(damaged.read_bytes()[:-100])
  with pytest.raises(ValueError, match=r"cannot read the state dict .*damaged.safetensors "
                                       r"\(damaged or not a .safetensors file"):
    pretrained.read_source(str(damaged))
  (tmp_path / "weights.pt").write_bytes(b"\x80\x02")
  with pytest.raises(ValueError, match=r"unknown state dict format '.pt'"):
    pretrained.read_source(str(tmp_path / "weights.pt"))
  (tmp_path / "not_an_export").mkdir()
  with pytest.raises(ValueError, match=r"export .*not_an_export is damaged \(export.json is "
                                       r"missing\)"):
    pretrained.read_source(str(tmp_path / "not_an_export"))


def test_train_py_refuses_a_missing_init_from_with_one_line(digits_dir, tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"), "--config=configs/demo.py",
       f"--workdir={workdir}", *tiny_flags(digits_dir, num_train_steps=2),
       f"--config.init_from={tmp_path / 'missing.safetensors'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode != 0
  assert errors == [f"error: {tmp_path / 'missing.safetensors'} does not exist; give a "
                    f".safetensors or .npz state dict file or an export directory."]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(workdir / "checkpoints")


# ---------------------------------------------------------------------------------------------
# Freezing and resuming.


def write_tiny_source(tmp_path, attention="lct", **kwargs):
  """A torch-layout .npz of a tiny LCT-ResNet-18 (10 classes) whose every value is known."""
  shapes = torch_layout_shapes(attention=attention, num_classes=10, groups=4, **kwargs)
  source = random_state_dict(shapes, seed=3)
  path = str(tmp_path / "source.npz")
  interop.write_state_dict_file(path, source)
  return path, source


def test_frozen_stages_and_bn_stay_bitwise_unchanged(digits_dir, tmp_path):
  path, source = write_tiny_source(tmp_path)
  config = tiny_finetune_config(digits_dir, num_train_steps=3, init_from=path, frozen_stages=1,
                                frozen_bn=True)
  CLASSIFICATION.train_and_evaluate(config, str(tmp_path / "run"))
  state = CLASSIFICATION.restore_state(config, str(tmp_path / "run"))
  after = torch_view(state)
  frozen, trained = [], []
  for name in after:
    if name.endswith("num_batches_tracked"):
      continue
    stem_or_layer1 = name.startswith(("conv1.", "bn1.", "layer1."))
    batchnorm = (".bn" in name or name.startswith("bn1.") or ".downsample.1." in name)
    (frozen if stem_or_layer1 or batchnorm else trained).append(name)
  for name in frozen:
    np.testing.assert_array_equal(after[name], source[name], err_msg=name)
  changed = [n for n in trained if not np.array_equal(after[n], source[n])]
  assert set(changed) == set(trained)
  assert any(n.startswith("layer2.") and n.endswith(".lct.w") for n in trained)
  # The optimizer keeps momentum only for the trained parameters.
  momentum_leaves = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) > 0]
  assert len(momentum_leaves) == len(trained)


def test_parameter_labels_follow_mmdetection_stage_numbering():
  model = models.create_model("resnet50", attention="lct")
  params = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, 64, 64, 3))))["params"]
  stem = {"conv1", "bn1"}
  stages = [{name for name in params if name.startswith(f"layer{s}_")} for s in range(1, 5)]
  for frozen_stages in range(-1, 5):
    labels = traverse_util.flatten_dict(freezing.parameter_labels(
        params, frozen_stages=frozen_stages, frozen_bn=False))
    frozen_tops = {p[0] for p, label in labels.items() if label == freezing.FROZEN}
    trained_tops = {p[0] for p, label in labels.items() if label == freezing.TRAINABLE}
    expected = (stem if frozen_stages >= 0 else set()).union(*stages[:max(frozen_stages, 0)])
    assert frozen_tops == expected and not frozen_tops & trained_tops
  bn_only = traverse_util.flatten_dict(freezing.parameter_labels(params, frozen_stages=-1,
                                                                 frozen_bn=True))
  frozen = {p for p, label in bn_only.items() if label == freezing.FROZEN}
  assert ("layer3_4", "bn3", "scale") in frozen and ("layer2_0", "downsample_bn", "bias") in frozen
  assert ("layer3_4", "conv3", "kernel") not in frozen and ("layer3_4", "lct", "w") not in frozen
  assert len(frozen) == 2 * 53                                 # ResNet-50 has 53 BatchNorms


def test_resumed_finetune_equals_a_straight_one_without_reading_the_source_again(digits_dir,
                                                                               tmp_path):
  path, _ = write_tiny_source(tmp_path)
  straight = tiny_finetune_config(digits_dir, num_train_steps=8, init_from=path,
                                  frozen_stages=1, frozen_bn=True)
  CLASSIFICATION.train_and_evaluate(straight, str(tmp_path / "straight"))
  first = tiny_finetune_config(digits_dir, num_train_steps=4, init_from=path, frozen_stages=1,
                               frozen_bn=True)
  CLASSIFICATION.train_and_evaluate(first, str(tmp_path / "resumed"))
  os.rename(path, path + ".gone")        # resuming must not read it (nor re-apply it)
  CLASSIFICATION.train_and_evaluate(straight, str(tmp_path / "resumed"))
  a = traverse_util.flatten_dict(jax.device_get(
      CLASSIFICATION.restore_state(straight, str(tmp_path / "straight")).variables))
  b = traverse_util.flatten_dict(jax.device_get(
      CLASSIFICATION.restore_state(straight, str(tmp_path / "resumed")).variables))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
  saved = json.load(open(tmp_path / "resumed" / "config.json"))
  assert saved["init_from"] == path
  assert saved["init_from_source"]["sha256"] == export_format.sha256(path + ".gone")


def test_changing_the_frozen_stages_of_a_run_is_refused(digits_dir, tmp_path):
  CLASSIFICATION.train_and_evaluate(tiny_finetune_config(digits_dir, num_train_steps=2),
                             str(tmp_path))
  with pytest.raises(loop.TrainingError, match=r"frozen_stages: -1 in the workdir vs 2 now"):
    CLASSIFICATION.train_and_evaluate(tiny_finetune_config(digits_dir, num_train_steps=4,
                                                    frozen_stages=2), str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Features and files.


@pytest.mark.parametrize("name", sorted(models.STAGE_SIZES))
def test_c2_to_c5_features_for_every_depth(name):
  model = models.create_model(name, attention="lct", groups=32)
  x = jnp.zeros((2, 224, 320, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, features_only=True))
  assert "fc" not in variables["params"]
  features = jax.eval_shape(lambda v: model.apply(v, x, features_only=True), variables)
  expansion = 4 if models.BOTTLENECK[name] else 1
  assert list(features) == ["c2", "c3", "c4", "c5"]
  for i, key in enumerate(features):
    stride = 4 * 2**i
    assert features[key].shape == (2, 224 // stride, 320 // stride, 64 * 2**i * expansion)
  full = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert jax.tree.structure(full["params"]["layer4_1"]) == jax.tree.structure(
      variables["params"]["layer4_1"])


def test_features_are_the_classifier_backbone_activations():
  model = models.create_model("resnet18", attention="lct", groups=4, num_classes=5,
                              width=TINY_WIDTH)
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = model.init(jax.random.key(0), x)
  features = model.apply(variables, x, features_only=True)
  logits = model.apply(variables, x)
  pooled = jnp.mean(features["c5"], axis=(1, 2))
  np.testing.assert_allclose(
      logits, pooled @ variables["params"]["fc"]["kernel"] + variables["params"]["fc"]["bias"],
      rtol=1e-5, atol=1e-5)


def test_safetensors_round_trip_is_exact(tmp_path):
  state_dict = random_state_dict(torch_layout_shapes(attention="lct", groups=4))
  for suffix in (".safetensors", ".npz"):
    path = str(tmp_path / f"weights{suffix}")
    interop.write_state_dict_file(path, state_dict)
    back = interop.read_state_dict_file(path)
    assert back.keys() == state_dict.keys()
    for name, value in state_dict.items():
      assert back[name].dtype == value.dtype and back[name].shape == value.shape
      np.testing.assert_array_equal(back[name], value)


def test_a_detector_export_as_init_from_is_refused_saying_what_it_is():
  detector_export = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "jax_0_10_2",
                                 "detector", "export")
  with pytest.raises(ValueError) as error:
    pretrained.read_source(detector_export)
  assert str(error.value) == (
      f"init_from: {detector_export} is a detector export (faster_rcnn with a resnet18 backbone); "
      f"init_from takes a classifier: an export of a classification run, or a "
      f"torchvision/timm-layout .safetensors / .npz state dict.")
