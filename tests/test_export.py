"""Exports: same logits as the training state, no pickle, atomic and refusing to overwrite, and
clear one-line errors for missing or damaged exports and workdirs."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from lct_flax import dataset_defaults
from lct_flax import export
from lct_flax import input_pipeline
from lct_flax import pixels
from lct_flax.tasks.classification import TASK as CLASSIFICATION

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def digits_images(dataset_config, n=64):
  """Normalised float images, as model.apply takes them."""
  batch = next(iter(input_pipeline.create_eval_iterator(dataset_config, global_batch_size=n)))
  return pixels.normalize(batch["image"], *dataset_defaults.pixel_mean_std(dataset_config))


def file_digests(path):
  return {name: hashlib.sha256(open(os.path.join(path, name), "rb").read()).hexdigest()
          for name in sorted(os.listdir(path))}


def test_export_gives_the_logits_of_the_training_state(tiny_demo_run, tiny_demo_export):
  state = CLASSIFICATION.restore_state(tiny_demo_run.config, tiny_demo_run.workdir)
  assert int(state.step) == tiny_demo_run.metrics["step"] == 40
  model, variables, config = export.load(tiny_demo_export)
  images = digits_images(tiny_demo_run.config.dataset)
  expected = CLASSIFICATION.create_model(tiny_demo_run.config, 10).apply(
      jax.device_get(state.variables), images, train=False)
  np.testing.assert_allclose(model.apply(variables, images, train=False), expected, rtol=1e-6,
                             atol=1e-6)
  assert jax.tree.structure(variables) == jax.tree.structure(jax.device_get(state.variables))
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(state.variables)):
    np.testing.assert_array_equal(got, want)
  # The config: what rebuilds the model, the eval preprocessing, and where it came from.
  assert config.model.to_dict() == {
      "name": "resnet18", "attention": "lct", "width": 0.125, "small_stem": True,
      "num_classes": 10, "dtype": "float32",
      "attention_kwargs": {"groups": 4, "w_init": 0.0, "b_init": 1.0, "use_norm": True,
                           "use_transform": True}}
  assert (config.dataset.name, config.dataset.eval_split) == ("sklearn_digits", "test")
  assert (config.dataset.image_size, config.dataset.resize_size) == (16, 16)
  np.testing.assert_allclose(config.dataset.mean, input_pipeline.IMAGENET_MEAN_RGB)
  assert config.source.step == 40 and config.source.workdir == tiny_demo_run.workdir
  assert config.training_config.num_train_steps == 40


def test_export_holds_no_pickle_and_no_optimizer_state(tiny_demo_export):
  assert sorted(os.listdir(tiny_demo_export)) == ["export.json", "variables.npz"]
  path = os.path.join(tiny_demo_export, "variables.npz")
  with np.load(path, allow_pickle=False) as npz:
    arrays = {name: npz[name] for name in npz.files}
  assert all(a.dtype != object and a.dtype.kind == "f" for a in arrays.values())
  assert {name.split("/")[0] for name in arrays} == {"params", "batch_stats"}
  assert not any("opt" in name or "momentum" in name or "trace" in name for name in arrays)
  with zipfile.ZipFile(path) as archive:  # every member is a plain .npy
    assert all(member.endswith(".npy") for member in archive.namelist())
  metadata = json.load(open(os.path.join(tiny_demo_export, "export.json")))
  assert metadata["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
  assert set(metadata["arrays"]) == set(arrays)


def _copy(src, tmp_path, name="copy"):
  dst = str(tmp_path / name)
  shutil.copytree(src, dst)
  return dst


def _rewrite_checksum(path):
  meta_path = os.path.join(path, "export.json")
  metadata = json.load(open(meta_path))
  metadata["sha256"] = hashlib.sha256(
      open(os.path.join(path, "variables.npz"), "rb").read()).hexdigest()
  json.dump(metadata, open(meta_path, "w"))


def _assert_one_line_error(excinfo, *fragments):
  message = str(excinfo.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


def test_damaged_or_missing_exports_give_clear_errors(tiny_demo_export, tmp_path):
  npz = "variables.npz"

  truncated = _copy(tiny_demo_export, tmp_path, "truncated")
  size = os.path.getsize(os.path.join(truncated, npz))
  with open(os.path.join(truncated, npz), "r+b") as f:
    f.truncate(size // 2)
  with pytest.raises(export.ExportError) as excinfo:
    export.load(truncated)
  _assert_one_line_error(excinfo, truncated, "damaged", "sha256", "--overwrite")
  _rewrite_checksum(truncated)  # a truncated file with a matching checksum: the reader notices
  with pytest.raises(export.ExportError) as excinfo:
    export.load(truncated)
  _assert_one_line_error(excinfo, truncated, "damaged", "cannot read")

  flipped = _copy(tiny_demo_export, tmp_path, "flipped")
  with open(os.path.join(flipped, npz), "r+b") as f:
    f.seek(size // 2)
    byte = f.read(1)
    f.seek(size // 2)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(export.ExportError) as excinfo:
    export.load(flipped)
  _assert_one_line_error(excinfo, flipped, "sha256")

  no_json = _copy(tiny_demo_export, tmp_path, "no_json")
  os.remove(os.path.join(no_json, "export.json"))
  with pytest.raises(export.ExportError) as excinfo:
    export.load(no_json)
  _assert_one_line_error(excinfo, no_json, "export.json is missing")

  no_npz = _copy(tiny_demo_export, tmp_path, "no_npz")
  os.remove(os.path.join(no_npz, npz))
  with pytest.raises(export.ExportError) as excinfo:
    export.load(no_npz)
  _assert_one_line_error(excinfo, no_npz, "variables.npz is missing")

  missing_key = _copy(tiny_demo_export, tmp_path, "missing_key")
  with np.load(os.path.join(missing_key, npz), allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files if k != "params/layer2_0/lct/w"}
  np.savez(os.path.join(missing_key, npz), **arrays)
  _rewrite_checksum(missing_key)
  with pytest.raises(export.ExportError) as excinfo:
    export.load(missing_key)
  _assert_one_line_error(excinfo, missing_key, "params/layer2_0/lct/w")
  meta_path = os.path.join(missing_key, "export.json")  # consistent metadata: the model check
  metadata = json.load(open(meta_path))
  del metadata["arrays"]["params/layer2_0/lct/w"]
  json.dump(metadata, open(meta_path, "w"))
  with pytest.raises(export.ExportError) as excinfo:
    export.load(missing_key)
  _assert_one_line_error(excinfo, "do not fit the model", "missing 1 array",
                         "params/layer2_0/lct/w")

  nowhere = str(tmp_path / "nowhere")
  with pytest.raises(export.ExportError) as excinfo:
    export.load(nowhere)
  _assert_one_line_error(excinfo, nowhere, "no export", "python -m lct_flax.export")
  assert isinstance(excinfo.value, ValueError)


def test_exporting_twice_is_refused_and_keeps_the_first(tiny_demo_run, tiny_demo_export,
                                                        tmp_path):
  output = _copy(tiny_demo_export, tmp_path, "export")
  before = file_digests(output)
  with pytest.raises(export.ExportError) as excinfo:
    export.export_workdir(tiny_demo_run.workdir, output)
  _assert_one_line_error(excinfo, output, "already exists", "--overwrite")
  assert file_digests(output) == before
  # The CLI: one line on stderr, exit code 1, the export untouched, no temporary left behind.
  result = run_cli("lct_flax.export", f"--workdir={tiny_demo_run.workdir}", f"--output={output}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "already exists" in result.stderr and "Traceback" not in result.stderr
  assert file_digests(output) == before
  # --overwrite replaces it atomically with an equal export.
  export.export_workdir(tiny_demo_run.workdir, output, step=40, overwrite=True)
  after = file_digests(output)
  assert after["variables.npz"] == before["variables.npz"]
  assert sorted(os.listdir(tmp_path)) == ["export"]
  export.load(output)


def test_cli_exports_a_chosen_step(tiny_demo_run, tiny_demo_export, tmp_path):
  output = str(tmp_path / "cli_export")
  result = run_cli("lct_flax.export", f"--workdir={tiny_demo_run.workdir}", f"--output={output}",
                   "--step=40")
  assert result.returncode == 0, result.stderr
  assert "step 40" in result.stdout
  assert (file_digests(output)["variables.npz"] ==
          file_digests(tiny_demo_export)["variables.npz"])


def test_cli_writes_a_torchvision_layout_safetensors(tiny_demo_run, tiny_demo_export, tmp_path):
  import safetensors.numpy
  from lct_flax import interop
  path = str(tmp_path / "demo.safetensors")
  result = run_cli("lct_flax.export", f"--workdir={tiny_demo_run.workdir}",
                   f"--safetensors={path}")
  assert result.returncode == 0, result.stderr
  assert os.listdir(tmp_path) == ["demo.safetensors"]
  written = safetensors.numpy.load_file(path)
  _, variables, _ = export.load(tiny_demo_export)
  expected = interop.to_torch_state_dict(jax.device_get(variables))
  assert written.keys() == expected.keys() and "layer4.1.lct.w" in written
  for name in expected:
    np.testing.assert_array_equal(written[name], expected[name], err_msg=name)
  again = run_cli("lct_flax.export", f"--workdir={tiny_demo_run.workdir}",
                  f"--safetensors={path}")
  assert again.returncode != 0
  assert again.stderr.strip().splitlines()[-1] == (
      f"error: {path} already exists; choose another --safetensors or pass --overwrite to "
      f"replace it.")


@pytest.mark.parametrize("name,attention,library", [("resnet18", None, "torchvision"),
                                                    ("resnet50", "se", "timm")])
def test_safetensors_load_into_torchvision_and_timm_models(name, attention, library, tmp_path):
  torch = pytest.importorskip("torch")
  safetensors_torch = pytest.importorskip("safetensors.torch")
  from lct_flax import models
  model = models.create_model(name, attention=attention)
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(
      lambda s: (rng.uniform(0.5, 1.5, s.shape) if len(s.shape) == 1 else
                 rng.standard_normal(s.shape) * np.sqrt(1 / np.prod(s.shape[:-1]))
                 ).astype(np.float32), shapes)
  path = export.write_torch_state_dict(str(tmp_path / "weights.safetensors"), variables)
  if library == "torchvision":
    torch_model = pytest.importorskip("torchvision").models.resnet18()
  else:
    torch_model = pytest.importorskip("timm").create_model("seresnet50")
  torch_model.load_state_dict(safetensors_torch.load_file(path), strict=True)
  with torch.no_grad():
    expected = torch_model.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  logits = model.apply(variables, x, train=False)
  np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)


def test_missing_workdir_or_checkpoint_gives_clear_errors(tiny_demo_run, tmp_path):
  missing = str(tmp_path / "no_such_workdir")
  with pytest.raises(export.ExportError) as excinfo:
    export.export_workdir(missing, str(tmp_path / "out"))
  _assert_one_line_error(excinfo, missing, "does not exist")

  not_a_run = tmp_path / "empty"
  not_a_run.mkdir()
  with pytest.raises(export.ExportError) as excinfo:
    export.export_workdir(str(not_a_run), str(tmp_path / "out"))
  _assert_one_line_error(excinfo, "config.json is missing", "not a training workdir")

  no_checkpoints = tmp_path / "no_checkpoints"
  no_checkpoints.mkdir()
  for name in ("config.json", "model.json"):
    shutil.copy(os.path.join(tiny_demo_run.workdir, name), no_checkpoints / name)
  with pytest.raises(export.ExportError) as excinfo:
    export.export_workdir(str(no_checkpoints), str(tmp_path / "out"))
  _assert_one_line_error(excinfo, "checkpoints", "no checkpoint")
  assert not os.path.exists(no_checkpoints / "checkpoints")  # nothing created in the workdir

  with pytest.raises(export.ExportError) as excinfo:
    export.export_workdir(tiny_demo_run.workdir, str(tmp_path / "out"), step=7)
  _assert_one_line_error(excinfo, "no checkpoint for step 7", "[40]")
  assert not os.path.exists(tmp_path / "out")
  assert not any(name.startswith(".out") for name in os.listdir(tmp_path))


def test_save_refuses_variables_that_do_not_fit_the_model(make_untrained_export, tmp_path):
  path = make_untrained_export("lct", groups=4)
  model, variables, config = export.load(path)
  variables["params"]["fc"]["bias"] = np.zeros(3, np.float32)
  with pytest.raises(export.ExportError, match="fc/bias has shape"):
    export.save(str(tmp_path / "bad"), variables, model_config=config.model.to_dict(),
                dataset_config=config.dataset.to_dict())
  assert not os.path.exists(tmp_path / "bad")


@pytest.mark.parametrize("key,value", [("max_candidates", 0), ("rcnn_samples", -1),
                                       ("fpn_channels", 1.5)])
def test_a_detector_export_with_a_bad_head_size_is_refused_naming_it(tmp_path, key, value):
  """A tiny detector export (tests/data) whose export.json was edited by hand."""
  source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "jax_0_10_2",
                        "detector", "export")
  edited = shutil.copytree(source, tmp_path / "export")
  with open(edited / "export.json") as f:
    metadata = json.load(f)
  metadata["model"][key] = value
  with open(edited / "export.json", "w") as f:
    json.dump(metadata, f)
  with pytest.raises(ValueError, match=re.escape(
      f"detector model config has {key}={value!r}; it must be an integer >= 1")):
    export.load(str(edited))
