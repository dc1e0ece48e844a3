"""Top-1, top-5 and loss of a classifier export over every example of a tfds split, exactly once
(`python -m lct_flax.evaluate --export=...` on a classifier).

The dataset, split, data_dir and eval preprocessing (image_size, resize_size, mean, std) default to
those the model was trained with (the export's `dataset` section); `dataset` changes only the data,
never the preprocessing. The last batch is padded and masked, so every example counts once
(undecodable images are skipped and reported). The step runs jitted over a mesh of all devices
(the batch split over them), through the training's own `classifier_steps.eval_step`: the uint8
batches are normalised on the device with the export's mean/std, exactly as in training.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional

import jax
import ml_collections

from lct_flax import classifier_steps
from lct_flax import dataset_defaults
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


def default_batch_size(export_config: ml_collections.ConfigDict, num_devices: int) -> int:
  """The training batch size (or 128), rounded up to a multiple of the device count."""
  batch_size = int(export_config.get("training_config", {}).get("batch_size", 0) or
                   DEFAULT_BATCH_SIZE)
  return math.ceil(batch_size / num_devices) * num_devices


def with_progress_bar(iterator: Iterator, total: int, description: str,
                      enabled: bool) -> Iterator:
  """`iterator`, with a progress bar on stderr when `enabled` (tqdm)."""
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


def evaluate_export(export_dir: str, model: Any, variables: dict,
                    config: ml_collections.ConfigDict, *, dataset: Optional[str] = None,
                    split: Optional[str] = None, data_dir: Optional[str] = None,
                    batch_size: Optional[int] = None, progress: bool = True,
                    results_dir: Optional[str] = None) -> dict:
  """The loaded export's result record (see the module docstring); `results_dir` is unused (a
  classifier writes nothing beside its result)."""
  del results_dir
  from lct_flax import input_pipeline  # TensorFlow: only once the export is known to be good
  dataset_config = eval_dataset_config(config, dataset=dataset, split=split, data_dir=data_dir)
  info = dataset_info(dataset_config)
  check_num_classes(int(config.model.num_classes), info, dataset_config, export_dir)

  mesh = parallel.create_mesh()
  if batch_size is None:
    batch_size = default_batch_size(config, mesh.devices.size)
  parallel.check_batch_size(batch_size, mesh)
  replicated = parallel.replicated_sharding(mesh)
  data_sharding = parallel.batch_sharding(mesh)
  p_eval_step = jax.jit(functools.partial(classifier_steps.eval_step, model=model,
                                          mean=dataset_config.mean, std=dataset_config.std),
                        in_shardings=(replicated, data_sharding), out_shardings=replicated)
  variables = jax.device_put(variables, replicated)

  start = time.perf_counter()
  raw = input_pipeline.create_eval_iterator(dataset_config, global_batch_size=batch_size)
  total = input_pipeline.num_eval_batches(dataset_config, batch_size)
  description = f"{dataset_config.name}:{dataset_config.eval_split}"
  batches = input_pipeline.prefetch_to_mesh(
      with_progress_bar(raw, total, description, progress and jax.process_index() == 0),
      data_sharding)
  metrics = classifier_steps.evaluate(variables, batches, p_eval_step)
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


def format_result(result: dict) -> str:
  line = (f"{result['dataset']}:{result['split']}  top-1 {100 * result['top1']:.2f}%  "
          f"top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}  "
          f"({result['count']} examples")
  if result["num_skipped"]:
    line += f", {result['num_skipped']} undecodable skipped"
  return line + ")"
