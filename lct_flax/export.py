"""Export a trained model (inference variables + model config); load it back.

    python -m lct_flax.export --workdir=DIR --output=EXPORT_DIR [--step=N] [--overwrite]
        [--safetensors=FILE.safetensors]

An export (`lct_flax.export_format`: variables.npz + export.json, no pickle) holds the inference
variables of a checkpoint and the `model` and `dataset` sections its task writes
(`lct_flax.tasks`). ``load(EXPORT_DIR)`` returns ``(model, variables, config)``: the flax module
the task builds from the `model` section, the variables dict ``{"params", "batch_stats"}`` (jax
arrays) and ``config``, an ``ml_collections.ConfigDict`` of export.json (so ``config.model.name``,
``config.dataset.image_size``, ``config.source.step``...). It checks the checksum, the arrays and
their shapes against the model before returning anything; so does ``save``.

``--safetensors=FILE`` also (or, without ``--output``, only) writes the variables as a
torchvision/timm-layout state dict (``write_torch_state_dict``) for PyTorch users.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lct_flax import export_format
from lct_flax import tasks
from lct_flax.export_format import COLLECTIONS, ExportError, load_variables, read_metadata

__all__ = ["ExportError", "export_workdir", "load", "load_variables", "read_metadata", "save",
           "write_torch_state_dict"]


def model_config_from_training(config: Mapping[str, Any], num_classes: int) -> dict:
  """The `model` section of a training config (a ConfigDict or its JSON dict)."""
  return tasks.of_config(config).model_section(config, num_classes)


def dataset_config_from_training(config: Mapping[str, Any]) -> dict:
  """The `dataset` section (data and eval preprocessing) of a training config."""
  return tasks.of_config(config).dataset_section(config)


def build_model(model_config: Mapping[str, Any]) -> Any:
  """The module of an export's `model` section, as its task builds it."""
  try:
    return tasks.of_model_section(model_config).build_model(model_config)
  except ValueError as error:
    raise ExportError(str(error)) from None


def _expected_variables(model: Any, model_config: Mapping[str, Any],
                        dataset_config: Mapping[str, Any]) -> dict:
  variables = tasks.of_model_section(model_config).abstract_variables(model, dataset_config)
  return {c: variables[c] for c in COLLECTIONS if c in variables}


def save(output: str, variables: Mapping[str, Any], *, model_config: Mapping[str, Any],
         dataset_config: Mapping[str, Any], source: Optional[Mapping[str, Any]] = None,
         training_config: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> str:
  """Writes an export of `variables` (only "params" and "batch_stats" are kept) to `output`.

  `model_config` and `dataset_config` are the task's sections (`model_config_from_training`,
  `dataset_config_from_training`). The variables are checked against the model first. Returns
  the absolute path of the export.
  """
  output = os.path.abspath(output)
  export_format.check_output_free(output, overwrite)
  model_config = json.loads(json.dumps(dict(model_config)))
  dataset_config = json.loads(json.dumps(dict(dataset_config)))
  flat = export_format.flatten_variables(jax.device_get(variables))
  export_format.check_variables(
      flat, _expected_variables(build_model(model_config), model_config, dataset_config),
      where="the variables to export")
  return export_format.write(
      output, flat, {"model": model_config, "dataset": dataset_config,
                     "source": dict(source or {}), "training_config": dict(training_config or {})},
      versions={"jax": jax.__version__, "numpy": np.__version__}, overwrite=overwrite)


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
  from lct_flax import loop
  try:
    with open(config_path) as f:
      config_json = json.load(f)
    with open(model_path) as f:
      num_classes = int(json.load(f)["num_classes"])
  except (ValueError, KeyError, TypeError) as error:
    raise ExportError(f"cannot read {config_path} / {model_path}: {error}.") from None
  config = ml_collections.ConfigDict(config_json)
  try:
    checkpointer = loop.checkpointer_for(workdir, create=False)
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
  try:
    state = tasks.of_config(config_json).restore_state(config, workdir, step)
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
    export_format.check_output_free(output, overwrite)  # before the (slow) restore
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


def load(export_dir: str) -> tuple[Any, dict, ml_collections.ConfigDict]:
  """(model, variables, config) of an export; see the module docstring.

  `variables` is `{"params": ..., "batch_stats": ...}` of jax arrays, ready for
  `model.apply(variables, images, train=False)` with NHWC images preprocessed as
  `config.dataset` says (a detector's: `lct_flax.detection.detect`). Raises ExportError (a
  ValueError) naming the path and the fix when the export is missing or damaged.
  """
  export_dir = os.path.abspath(export_dir)
  metadata = read_metadata(export_dir)
  flat = load_variables(export_dir, metadata)
  try:
    model = build_model(metadata["model"])
  except ExportError as error:
    raise export_format.damaged(export_dir, str(error).rstrip(".")) from None
  export_format.check_variables(
      flat, _expected_variables(model, metadata["model"], metadata["dataset"]),
      where=f"the arrays of export {export_dir}")
  variables = export_format.unflatten_variables({k: jnp.asarray(v) for k, v in flat.items()})
  return model, variables, ml_collections.ConfigDict(metadata)


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
