"""Export a trained model (inference variables + model config); load it back.

    python -m lct_flax.export --workdir=DIR --output=EXPORT_DIR [--step=N] [--overwrite]
        [--safetensors=FILE.safetensors]

An export is a directory with two files, neither of which runs code when read (no pickle):

* ``variables.npz``: the inference variables only (``params`` and ``batch_stats``; no optimizer
  state, no RNG), one plain numeric array per leaf, named by its path joined with "/", e.g.
  ``params/layer1_0/lct/w`` or ``batch_stats/bn1/mean``. Written with ``numpy.savez`` and read
  with ``numpy.load(..., allow_pickle=False)``.
* ``export.json``: ``format`` and ``format_version``; ``variables_file`` and its ``sha256``; the
  name, shape and dtype of every array; ``model`` (the arguments of ``models.create_model``:
  name, attention, attention_kwargs, width, small_stem, num_classes, dtype); ``dataset`` (a
  dataset config for ``input_pipeline`` with the eval preprocessing: name, eval_split, data_dir,
  image_size, resize_size, mean, std); ``source`` (workdir, step) and ``training_config`` (the
  workdir's config.json), all plain JSON.

``load(EXPORT_DIR)`` returns ``(model, variables, config)``: the flax module, the variables dict
``{"params", "batch_stats"}`` (jax arrays) and ``config``, an ``ml_collections.ConfigDict`` of
export.json (so ``config.model.name``, ``config.dataset.image_size``, ``config.source.step``...).
It checks the checksum, the arrays and their shapes against the model before returning anything.

Exports are written into a temporary directory next to the output and renamed into place when
complete, so a crash never leaves a half-written export that looks finished (the next export to
the same output removes a temporary directory that a killed one left; a failed write, e.g. a full
disk, removes its own and raises ``fileio.WriteError`` in one line); an existing export is
replaced only with ``overwrite=True`` (``--overwrite``).

``--safetensors=FILE`` also (or, without ``--output``, only) writes the variables as a
torchvision/timm-layout state dict (``write_torch_state_dict``) for PyTorch users.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lct_flax import dataset_defaults
from lct_flax import fileio

if TYPE_CHECKING:
  from lct_flax import models  # flax: imported when a model is built (not to refuse a command)

FORMAT = "lct_flax.export"
FORMAT_VERSION = 1
VARIABLES_FILE = "variables.npz"
METADATA_FILE = "export.json"
COLLECTIONS = ("params", "batch_stats")
MODEL_KEYS = ("name", "attention", "attention_kwargs", "width", "small_stem", "num_classes",
              "dtype")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_PREPROCESSING_KEYS = ("image_size", "resize_size", "mean", "std")


class ExportError(ValueError):
  """An export (or the workdir it is made from) is missing, damaged or would be overwritten."""


# ---------------------------------------------------------------------------------------------
# Flat <-> nested variables.


def _flatten(variables: Mapping[str, Any], leaf=lambda x: x) -> dict[str, Any]:
  """{"params": {...}, "batch_stats": {...}} -> {"params/a/b": leaf(value), ...}."""
  flat = {}

  def visit(prefix, node):
    if isinstance(node, Mapping):
      for key in sorted(node):
        if "/" in str(key):
          raise ExportError(f"variable name {key!r} under {prefix} contains '/'.")
        visit(f"{prefix}/{key}", node[key])
    else:
      flat[prefix] = leaf(node)

  for collection in COLLECTIONS:
    if collection in variables:
      visit(collection, variables[collection])
  return flat


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{"params": {...}, "batch_stats": {...}} -> {"params/a/b": array, ...} (numpy, host)."""
  return _flatten(variables, lambda node: np.asarray(jax.device_get(node)))


def unflatten_variables(flat: Mapping[str, Any]) -> dict:
  nested: dict = {}
  for name, value in flat.items():
    node = nested
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return nested


# ---------------------------------------------------------------------------------------------
# Model and dataset sections of export.json.


def _is_detection(section: Mapping[str, Any]) -> bool:
  return section.get("task") == "detection"


def model_config_from_training(config: Mapping[str, Any], num_classes: int) -> dict:
  """The `model` section from a training config (a ConfigDict or its JSON dict); a detector's is
  `detection.exporting.model_section`."""
  if _is_detection(config):
    from lct_flax.detection import exporting
    return exporting.model_section(config, num_classes)
  m = config["model"]
  kwargs = m.get("attention_kwargs") or {}
  if hasattr(kwargs, "to_dict"):
    kwargs = kwargs.to_dict()
  return {
      "name": m["name"],
      "attention": None if m.get("attention") in (None, "none") else m["attention"],
      "attention_kwargs": dict(kwargs),
      "width": float(m.get("width", 1.0)),
      "small_stem": bool(m.get("small_stem", False)),
      "num_classes": int(num_classes),
      "dtype": "bfloat16" if config.get("half_precision") else "float32",
  }


def dataset_config_from_training(config: Mapping[str, Any]) -> dict:
  """The `dataset` section (eval preprocessing) from a training config; a detector's is its
  detection data config."""
  if _is_detection(config):
    from lct_flax.detection import exporting
    return exporting.dataset_section(config)
  d = config["dataset"]
  defaults = dataset_defaults.default_dataset_config(d["name"])
  section = {"name": d["name"], "eval_split": d.get("eval_split", defaults.eval_split),
             "data_dir": d.get("data_dir")}
  for key in _PREPROCESSING_KEYS:
    value = d.get(key, defaults[key])
    section[key] = list(value) if isinstance(value, (tuple, list)) else value
  if section["resize_size"] is None:
    section["resize_size"] = int(round(section["image_size"] / 0.875))
  return section


def build_model(model_config: Mapping[str, Any]) -> models.ResNet:
  """`models.create_model` from an export's `model` section (a detector's:
  `detection.exporting.build_detector`)."""
  if _is_detection(model_config):
    from lct_flax.detection import exporting
    try:
      return exporting.build_detector(model_config)
    except ValueError as error:
      raise ExportError(str(error)) from None
  from lct_flax import models
  missing = [k for k in MODEL_KEYS if k not in model_config]
  if missing:
    raise ExportError(f"model config lacks {missing}; it needs {list(MODEL_KEYS)}.")
  if model_config["dtype"] not in DTYPES:
    raise ExportError(f"unknown dtype {model_config['dtype']!r}; use one of {sorted(DTYPES)}.")
  kwargs = model_config["attention_kwargs"]
  kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs or {})
  return models.create_model(
      model_config["name"], attention=model_config["attention"],
      num_classes=int(model_config["num_classes"]), dtype=DTYPES[model_config["dtype"]],
      width=float(model_config["width"]), small_stem=bool(model_config["small_stem"]), **kwargs)


def abstract_variables(model: models.ResNet, image_size: int) -> dict:
  """Shapes and dtypes of the model's inference variables (nothing is computed)."""
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
                         train=False))
  return {c: variables[c] for c in COLLECTIONS if c in variables}


def _expected_variables(model: Any, model_config: Mapping[str, Any],
                        dataset_config: Mapping[str, Any]) -> dict:
  """`abstract_variables` of a classifier, or of a detector on its first canvas."""
  if _is_detection(model_config):
    from lct_flax.detection import exporting
    variables = exporting.abstract_variables(model, tuple(dataset_config["canvases"][0]))
    return {c: variables[c] for c in COLLECTIONS if c in variables}
  return abstract_variables(model, int(dataset_config["image_size"]))


# ---------------------------------------------------------------------------------------------
# Writing.


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(functools.partial(f.read, 1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _check_output_free(output: str, overwrite: bool) -> None:
  if os.path.lexists(output) and not overwrite:
    raise ExportError(f"{output} already exists; choose another --output or pass --overwrite "
                      f"to replace it.")
  if os.path.exists(output) and not os.path.isdir(output):
    raise ExportError(f"{output} exists and is not a directory; choose another --output.")


def save(output: str, variables: Mapping[str, Any], *, model_config: Mapping[str, Any],
         dataset_config: Mapping[str, Any], source: Optional[Mapping[str, Any]] = None,
         training_config: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> str:
  """Writes an export of `variables` (only "params" and "batch_stats" are kept) to `output`.

  `model_config` has the keys of MODEL_KEYS, `dataset_config` at least name, eval_split,
  image_size, resize_size, mean and std. The variables are checked against the model first.
  Returns the absolute path of the export.
  """
  output = os.path.abspath(output)
  _check_output_free(output, overwrite)
  model_config = json.loads(json.dumps(dict(model_config)))
  dataset_config = json.loads(json.dumps(dict(dataset_config)))
  flat = flatten_variables(variables)
  for name, array in flat.items():
    if array.dtype.kind not in "fiub" or array.dtype.fields is not None:
      raise ExportError(f"variable {name} has dtype {array.dtype}, which an export cannot hold.")
  _check_variables(flat, _expected_variables(build_model(model_config), model_config,
                                             dataset_config), where="the variables to export")

  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  fileio.remove_abandoned_temporaries(parent, os.path.basename(output))  # of a killed export
  tmp = tempfile.mkdtemp(prefix=fileio.temporary_prefix(os.path.basename(output)), dir=parent)
  try:
    # mkdtemp makes it private; an export is an ordinary directory.
    os.chmod(tmp, 0o777 & ~fileio.current_umask())
    variables_path = os.path.join(tmp, VARIABLES_FILE)
    with open(variables_path, "wb") as f:
      np.savez(f, **flat)
      f.flush()
      os.fsync(f.fileno())
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"jax": jax.__version__, "numpy": np.__version__},
        "variables_file": VARIABLES_FILE,
        "sha256": _sha256(variables_path),
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)}
                   for name, a in flat.items()},
        "model": model_config,
        "dataset": dataset_config,
        "source": json.loads(json.dumps(dict(source or {}))),
        "training_config": json.loads(json.dumps(dict(training_config or {}))),
    }
    with open(os.path.join(tmp, METADATA_FILE), "w") as f:
      json.dump(metadata, f, indent=2, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    fileio.fsync_dir(tmp)
    _move_into_place(tmp, output, overwrite)
  except BaseException as error:
    shutil.rmtree(tmp, ignore_errors=True)
    failure = fileio.write_error(
        error, what=f"export {os.path.basename(output)}", directory=parent,
        needed_bytes=sum(a.nbytes for a in flat.values()),
        then="Nothing was exported: free some space and export again.")
    if failure is not None:
      raise failure from error
    raise
  fileio.fsync_dir(parent)
  return output


def _move_into_place(tmp: str, output: str, overwrite: bool) -> None:
  _check_output_free(output, overwrite)  # again: something may have appeared meanwhile
  if not os.path.lexists(output):
    os.rename(tmp, output)
    return
  # Replacing: move the old export aside, move the new one in, then delete the old one.
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.old-", dir=os.path.dirname(output))
  os.rmdir(old)
  os.rename(output, old)
  try:
    os.rename(tmp, output)
  except BaseException:
    os.rename(old, output)
    raise
  shutil.rmtree(old, ignore_errors=True)


def restore_inference_variables(workdir: str, step: Optional[int] = None
                                ) -> tuple[dict, dict, int, int]:
  """Restores checkpoint `step` (default: newest) of a training workdir, writing nothing there.

  Returns (variables {"params", "batch_stats"} on the host, the training config as a JSON dict,
  num_classes, step).
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise ExportError(f"workdir {workdir} does not exist; pass the --workdir of a training run.")
  config_path = os.path.join(workdir, "config.json")
  model_path = os.path.join(workdir, "model.json")
  for path in (config_path, model_path):
    if not os.path.isfile(path):
      raise ExportError(f"{path} is missing: {workdir} is not a training workdir (train.py "
                        f"writes config.json and model.json there).")
  if step is not None and step < 0:
    raise ExportError(f"--step must be a checkpoint step (>= 0), got {step}.")
  from lct_flax import checkpointing  # the training side (orbax): only once the workdir is one
  from lct_flax import trainer
  try:
    with open(config_path) as f:
      config_json = json.load(f)
    with open(model_path) as f:
      num_classes = int(json.load(f)["num_classes"])
  except (ValueError, KeyError, TypeError) as error:
    raise ExportError(f"cannot read {config_path} / {model_path}: {error}.") from None
  config = ml_collections.ConfigDict(config_json)
  try:
    checkpointer = trainer.checkpointer_for(workdir, config, create=False)
  except checkpointing.CheckpointError as error:
    raise ExportError(str(error)) from None
  try:
    steps = checkpointer.all_steps()
  finally:
    checkpointer.close()
  if not steps:
    raise ExportError(f"no checkpoint in {checkpointer.directory}; train longer or point "
                      f"--workdir at a finished run.")
  if step is not None and step not in steps:
    raise ExportError(f"no checkpoint for step {step} in {checkpointer.directory}; available "
                      f"steps: {steps}.")
  if _is_detection(config_json):
    from lct_flax.detection import task as restoring
  else:
    restoring = trainer
  try:
    state = restoring.restore_state(config, workdir, step)
  except (checkpointing.CheckpointError, ValueError, KeyError, TypeError,
          FileNotFoundError) as error:
    raise ExportError(f"cannot restore a checkpoint of {workdir} with the workdir's own config "
                      f"({type(error).__name__}: {str(error).strip().splitlines()[0]}).") from None
  return jax.device_get(state.variables), config_json, num_classes, int(state.step)


def export_workdir(workdir: str, output: Optional[str], step: Optional[int] = None, *,
                   overwrite: bool = False, safetensors: Optional[str] = None) -> Optional[str]:
  """Exports checkpoint `step` (default: the newest) of a training workdir to `output` (an export
  directory) and/or `safetensors` (a torchvision-layout state dict file, `write_torch_state_dict`).
  Returns the export's absolute path (None without `output`)."""
  if output is None and safetensors is None:
    raise ExportError("nothing to write: give --output=DIR (an export) and/or "
                      "--safetensors=FILE (a torchvision-layout state dict).")
  output = None if output is None else os.path.abspath(output)
  if output is not None:
    _check_output_free(output, overwrite)  # before the (slow) restore
  if safetensors is not None:
    _check_file_free(safetensors, overwrite)
  variables, config_json, num_classes, step = restore_inference_variables(workdir, step)
  if safetensors is not None:
    write_torch_state_dict(safetensors, variables, overwrite=overwrite)
  if output is None:
    return None
  return save(output, variables,
              model_config=model_config_from_training(config_json, num_classes),
              dataset_config=dataset_config_from_training(config_json),
              source={"workdir": os.path.abspath(workdir), "step": step},
              training_config=config_json, overwrite=overwrite)


def _check_file_free(path: str, overwrite: bool) -> None:
  if not path.endswith(".safetensors"):
    raise ExportError(f"{path}: a torch state dict file must end in .safetensors.")
  if os.path.lexists(path) and not overwrite:
    raise ExportError(f"{path} already exists; choose another --safetensors or pass --overwrite "
                      f"to replace it.")


def write_torch_state_dict(path: str, variables: Mapping[str, Any], *,
                           overwrite: bool = False) -> str:
  """Writes `variables` as a torchvision/timm-layout `.safetensors` state dict (atomically):
  PyTorch users read it with `safetensors.torch.load_file` and `model.load_state_dict`; LCT
  models add their `layerS.B.lct.w` / `.lct.b` tensors (`lct_flax.interop`)."""
  from lct_flax import interop  # pylint: disable=import-outside-toplevel

  path = os.path.abspath(path)
  _check_file_free(path, overwrite)
  interop.write_state_dict_file(path, interop.to_torch_state_dict(
      {c: variables[c] for c in COLLECTIONS if c in variables}))
  return path


# ---------------------------------------------------------------------------------------------
# Reading.


def _damaged(path: str, what: str) -> ExportError:
  return ExportError(f"export {path} is damaged ({what}); export it again with "
                     f"`python -m lct_flax.export --workdir=... --output={path} --overwrite`.")


def read_metadata(export_dir: str) -> dict:
  """export.json of an export, checked for format and required sections."""
  export_dir = os.path.abspath(export_dir)
  if not os.path.isdir(export_dir):
    raise ExportError(f"no export at {export_dir}; create one with "
                      f"`python -m lct_flax.export --workdir=DIR --output={export_dir}`.")
  path = os.path.join(export_dir, METADATA_FILE)
  if not os.path.isfile(path):
    raise _damaged(export_dir, f"{METADATA_FILE} is missing")
  try:
    with open(path) as f:
      metadata = json.load(f)
  except (ValueError, UnicodeDecodeError) as error:
    raise _damaged(export_dir, f"{METADATA_FILE} is not valid JSON: {error}") from None
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    raise _damaged(export_dir, f"{METADATA_FILE} is not an {FORMAT} file")
  if metadata.get("format_version") != FORMAT_VERSION:
    raise ExportError(f"export {export_dir} has format version {metadata.get('format_version')}; "
                      f"this code reads version {FORMAT_VERSION}: export it again.")
  for key in ("variables_file", "sha256", "model", "dataset"):
    if key not in metadata:
      raise _damaged(export_dir, f"{METADATA_FILE} lacks {key!r}")
  return metadata


def _check_variables(flat: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
  expected = _flatten(expected)
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing {len(missing)} array(s), e.g. {missing[0]}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected array(s), e.g. {unexpected[0]}")
    raise ExportError(f"{where} do not fit the model: {'; '.join(parts)}.")
  for name, spec in expected.items():
    if tuple(flat[name].shape) != tuple(spec.shape):
      raise ExportError(f"{where} do not fit the model: {name} has shape "
                        f"{tuple(flat[name].shape)}, the model needs {tuple(spec.shape)}.")


def load_variables(export_dir: str, metadata: Optional[dict] = None) -> dict[str, np.ndarray]:
  """The flat arrays of an export, after checking the sha256 of the arrays file."""
  export_dir = os.path.abspath(export_dir)
  metadata = read_metadata(export_dir) if metadata is None else metadata
  path = os.path.join(export_dir, metadata["variables_file"])
  if not os.path.isfile(path):
    raise _damaged(export_dir, f"{metadata['variables_file']} is missing")
  if _sha256(path) != metadata["sha256"]:
    raise _damaged(export_dir, f"the sha256 of {metadata['variables_file']} does not match "
                               f"{METADATA_FILE}")
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {name: npz[name] for name in npz.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
    raise _damaged(export_dir, f"cannot read {metadata['variables_file']}: {error}") from None
  for name, spec in metadata.get("arrays", {}).items():
    if name not in flat:
      raise _damaged(export_dir, f"{metadata['variables_file']} lacks {name}")
    if list(flat[name].shape) != list(spec["shape"]) or str(flat[name].dtype) != spec["dtype"]:
      raise _damaged(export_dir, f"{name} is {flat[name].dtype}{list(flat[name].shape)}, "
                                 f"{METADATA_FILE} says {spec['dtype']}{spec['shape']}")
  return flat


def load(export_dir: str) -> tuple[models.ResNet, dict, ml_collections.ConfigDict]:
  """(model, variables, config) of an export; see the module docstring.

  `variables` is `{"params": ..., "batch_stats": ...}` of jax arrays, ready for
  `model.apply(variables, images, train=False)` with NHWC images preprocessed as
  `config.dataset` says. Raises ExportError (a ValueError) naming the path and the fix when the
  export is missing or damaged.
  """
  export_dir = os.path.abspath(export_dir)
  metadata = read_metadata(export_dir)
  flat = load_variables(export_dir, metadata)
  try:
    model = build_model(metadata["model"])
  except ExportError as error:
    raise _damaged(export_dir, str(error).rstrip(".")) from None
  _check_variables(flat, _expected_variables(model, metadata["model"], metadata["dataset"]),
                   where=f"the arrays of export {export_dir}")
  variables = unflatten_variables({k: jnp.asarray(v) for k, v in flat.items()})
  config = ml_collections.ConfigDict(metadata)
  return model, variables, config


# ---------------------------------------------------------------------------------------------
# Entry point.


def main(argv):
  from absl import app
  from absl import flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  output = export_workdir(values.workdir, values.output, values.step, overwrite=values.overwrite,
                          safetensors=values.safetensors)
  if output is not None:
    metadata = read_metadata(output)
    print(f"exported {metadata['model']['name']} ({metadata['model']['attention']}) step "
          f"{metadata['source']['step']} of {metadata['source']['workdir']} to {output}")
  if values.safetensors is not None:
    print(f"wrote the torchvision-layout state dict {os.path.abspath(values.safetensors)}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "Training workdir (config.json, model.json, checkpoints/).")
  flags.DEFINE_string("output", None, "Directory to write the export to (must not exist).")
  flags.DEFINE_string("safetensors", None,
                      "Also (or only) write a torchvision-layout .safetensors state dict here.")
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the newest).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing export at --output / --safetensors.")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  from lct_flax import cli
  _define_flags()
  cli.run(main)
