"""Top-1, top-5 and loss of an export over every example of a tfds split, exactly once.

    python -m lct_flax.evaluate --export=EXPORT_DIR [--dataset=NAME --split=SPLIT
        --data_dir=DIR --batch_size=B --output=result.json]

The dataset, split, data_dir and eval preprocessing (image_size, resize_size, mean, std) default to
those the model was trained with (the export's `dataset` section); `--dataset` changes only the
data, never the preprocessing. The last batch is padded and masked, so every example counts once
(undecodable images are skipped and reported). The step runs jitted over a mesh of all devices
(the batch split over them), through the trainer's own `eval_step` and `evaluate`: the uint8
batches are normalised on the device with the export's mean/std, exactly as in training.

The result is printed and written as JSON (default `EXPORT_DIR/eval_<dataset>_<split>.json`):
`top1`, `top5` (fractions), `loss` (mean cross-entropy), `count` (examples evaluated),
`num_skipped`, plus the dataset, split, export path, source step and model.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Iterator, Optional

import jax
import ml_collections

from lct_flax import dataset_defaults
from lct_flax import export as export_lib
from lct_flax import fileio
from lct_flax import parallel

if TYPE_CHECKING:
  from lct_flax import input_pipeline  # TensorFlow: imported where the data is read

DEFAULT_BATCH_SIZE = 128


def eval_dataset_config(export_config: ml_collections.ConfigDict, *, dataset: Optional[str] = None,
                        split: Optional[str] = None,
                        data_dir: Optional[str] = None) -> ml_collections.ConfigDict:
  """An input_pipeline dataset config: the export's eval preprocessing on the chosen data.

  Without `dataset` (or with the export's own) the split and data_dir default to the export's;
  another dataset gets its default eval split and tfds' default data_dir.
  """
  exported = export_config.dataset
  same = dataset is None or dataset == exported.name
  name = exported.name if same else dataset
  config = dataset_defaults.default_dataset_config(name)
  if same:
    config.eval_split = exported.get("eval_split", config.eval_split)
    config.data_dir = exported.get("data_dir")
  if split is not None:
    config.eval_split = split
  if data_dir is not None:
    config.data_dir = data_dir
  # Only the eval split is read; the train split then need not exist (get_dataset_info reads it).
  config.train_split = config.eval_split
  config.image_size = int(exported.image_size)
  config.resize_size = int(exported.resize_size)
  config.mean = tuple(float(v) for v in exported.mean)
  config.std = tuple(float(v) for v in exported.std)
  return config


def dataset_info(dataset_config: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
  """get_dataset_info, with an unknown split turned into a clear DatasetError."""
  from lct_flax import input_pipeline
  try:
    return input_pipeline.get_dataset_info(dataset_config)
  except KeyError:
    import tensorflow_datasets as tfds
    info = tfds.builder(dataset_config.name, data_dir=dataset_config.data_dir).info
    features = sorted(info.features.keys())
    if not {"image", "label"} <= set(features):
      raise input_pipeline.DatasetError(
          f"{dataset_config.name} is not an image classification dataset (its features are "
          f"{features}); evaluate the classifier on a dataset with 'image' and 'label'.") from None
    splits = sorted(info.splits.keys())
    raise input_pipeline.DatasetError(
        f"{dataset_config.name} has no split {dataset_config.eval_split!r}; choose --split from "
        f"{splits}.") from None


def check_num_classes(model_classes: int, info: input_pipeline.DatasetInfo,
                      dataset_config: ml_collections.ConfigDict, export_dir: str) -> None:
  if info.num_classes != model_classes:
    raise ValueError(
        f"{dataset_config.name} has {info.num_classes} classes but the model in {export_dir} has "
        f"{model_classes}; evaluate it on a dataset with the classes it was trained on.")


def check_arguments(*, batch_size: Optional[int] = None, data_dir: Optional[str] = None) -> None:
  """Refuses a non-positive batch size or a missing data_dir before anything is loaded."""
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"--batch_size must be positive, got {batch_size}.")
  if data_dir is not None and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"--data_dir {data_dir} does not exist; pass the tfds data directory "
                            f"the dataset was prepared in.")


def default_batch_size(export_config: ml_collections.ConfigDict, num_devices: int) -> int:
  """The training batch size (or 128), rounded up to a multiple of the device count."""
  batch_size = int(export_config.get("training_config", {}).get("batch_size", 0) or
                   DEFAULT_BATCH_SIZE)
  return math.ceil(batch_size / num_devices) * num_devices


def _progress(iterator: Iterator, total: int, description: str, enabled: bool) -> Iterator:
  try:
    from tqdm import tqdm
  except ImportError:  # pragma: no cover - tqdm is in requirements
    tqdm = None
  if not enabled:
    yield from iterator
  elif tqdm is not None:
    yield from tqdm(iterator, total=total, desc=description, unit="batch", file=sys.stderr,
                    dynamic_ncols=True)
  else:  # pragma: no cover
    for i, item in enumerate(iterator, 1):
      print(f"\r{description}: {i}/{total} batches", end="", file=sys.stderr, flush=True)
      yield item
    print(file=sys.stderr)


def evaluate_export(export_dir: str, *, dataset: Optional[str] = None, split: Optional[str] = None,
                    data_dir: Optional[str] = None, batch_size: Optional[int] = None,
                    progress: bool = True, results_dir: Optional[str] = None) -> dict:
  """Evaluates the export on the split (defaults as in the module docstring); returns the result
  dict that the CLI writes. A detector's COCO results JSONs go to `results_dir` (default: the
  export's directory)."""
  check_arguments(batch_size=batch_size, data_dir=data_dir)
  export_dir = os.path.abspath(export_dir)
  model, variables, config = export_lib.load(export_dir)
  if config.model.get("task") == "detection":
    if dataset is not None:
      raise ValueError("--dataset does not apply to a detector export; it evaluates on its own "
                       "dataset (choose the split with --split, the data with --data_dir).")
    from lct_flax.detection import evaluation
    return evaluation.evaluate_export(export_dir, model, variables, config, split=split,
                                      data_dir=data_dir, batch_size=batch_size,
                                      results_dir=results_dir)
  from lct_flax import input_pipeline  # TensorFlow: only once the export is known to be good
  from lct_flax import trainer
  dataset_config = eval_dataset_config(config, dataset=dataset, split=split, data_dir=data_dir)
  info = dataset_info(dataset_config)
  check_num_classes(int(config.model.num_classes), info, dataset_config, export_dir)

  mesh = parallel.create_mesh()
  if batch_size is None:
    batch_size = default_batch_size(config, mesh.devices.size)
  parallel.check_batch_size(batch_size, mesh)
  replicated = parallel.replicated_sharding(mesh)
  data_sharding = parallel.batch_sharding(mesh)
  p_eval_step = jax.jit(functools.partial(trainer.eval_step, model=model,
                                          mean=dataset_config.mean, std=dataset_config.std),
                        in_shardings=(replicated, data_sharding), out_shardings=replicated)
  variables = jax.device_put(variables, replicated)

  start = time.perf_counter()
  raw = input_pipeline.create_eval_iterator(dataset_config, global_batch_size=batch_size)
  total = input_pipeline.num_eval_batches(dataset_config, batch_size)
  description = f"{dataset_config.name}:{dataset_config.eval_split}"
  batches = input_pipeline.prefetch_to_mesh(
      _progress(raw, total, description, progress and jax.process_index() == 0), data_sharding)
  metrics = trainer.evaluate(variables, batches, p_eval_step)
  return {
      "top1": metrics["eval_top1"],
      "top5": metrics["eval_top5"],
      "loss": metrics["eval_loss"],
      "count": int(round(metrics["eval_count"])),
      "num_skipped": int(getattr(raw, "num_skipped", 0)),
      "split_size": int(info.num_eval_examples),
      "dataset": dataset_config.name,
      "split": dataset_config.eval_split,
      "data_dir": dataset_config.data_dir,
      "batch_size": int(batch_size),
      "num_devices": int(mesh.devices.size),
      "seconds": round(time.perf_counter() - start, 3),
      "export": export_dir,
      "step": config.get("source", {}).get("step"),
      "model": config.model.to_dict(),
  }


def default_output_path(export_dir: str, dataset: str, split: str) -> str:
  safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")
  return os.path.join(os.path.abspath(export_dir), f"eval_{safe(dataset)}_{safe(split)}.json")


def format_result(result: dict) -> str:
  line = (f"{result['dataset']}:{result['split']}  top-1 {100 * result['top1']:.2f}%  "
          f"top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}  "
          f"({result['count']} examples")
  if result["num_skipped"]:
    line += f", {result['num_skipped']} undecodable skipped"
  return line + ")"


def main(argv):
  from absl import app
  from absl import flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  results_dir = (os.path.dirname(os.path.abspath(values.output)) if values.output
                 else os.path.abspath(values.export))
  reason = fileio.unwritable_reason(results_dir) if os.path.isdir(values.export) else None
  if reason:
    raise PermissionError(f"cannot write the evaluation results in {results_dir} ({reason}); "
                          f"pass --output=PATH in a writable directory.")
  result = evaluate_export(values.export, dataset=values.dataset, split=values.split,
                           data_dir=values.data_dir, batch_size=values.batch_size,
                           progress=values.progress, results_dir=results_dir)
  output = values.output or default_output_path(values.export, result["dataset"], result["split"])
  if jax.process_index() == 0:
    if "AP" in result:
      from lct_flax.detection import evaluation
      print(evaluation.format_result(result))
    else:
      print(format_result(result))
    fileio.write_json_atomically(output, result)
    print(f"wrote {os.path.abspath(output)}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("export", None, "Export directory (python -m lct_flax.export).")
  flags.DEFINE_string("dataset", None, "tfds dataset name (default: the export's).")
  flags.DEFINE_string("split", None, "Split to evaluate (default: the export's eval split).")
  flags.DEFINE_string("data_dir", None, "tfds data directory (default: the export's).")
  flags.DEFINE_integer("batch_size", None,
                       "Global eval batch size (default: the training batch size).")
  flags.DEFINE_string("output", None,
                      "Result JSON path (default: EXPORT_DIR/eval_<dataset>_<split>.json); a "
                      "detector's COCO results JSONs go beside it.")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
  flags.mark_flags_as_required(["export"])


if __name__ == "__main__":
  from lct_flax import cli
  _define_flags()
  cli.run(main)
