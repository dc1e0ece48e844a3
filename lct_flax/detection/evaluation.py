"""COCO box AP (and a Mask R-CNN's mask AP) of a detector over every image of a split exactly once:
the periodic evaluation of training (`detection.task`) and of exports (`python -m lct_flax.evaluate
--export=...`).

Eval batches (`data.create_eval_iterator`: every image once across processes, padding masked)
are detected by the compiled `steps.detect_step` (one program per canvas), each process's
detections are collected with their image ids and scales (masks pasted into the original images
and RLE-encoded on the host), and `coco_eval.CocoEvaluator` gathers them on process 0, writes the
COCO results JSONs and runs COCOeval bbox (and segm).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from lct_flax import parallel
from lct_flax.detection import steps


def compile_detect_step(model: Any, mesh: Any) -> Callable:
  return jax.jit(functools.partial(steps.detect_step, model=model),
                 in_shardings=(parallel.replicated_sharding(mesh),
                               parallel.batch_sharding(mesh)),
                 out_shardings=parallel.batch_sharding(mesh))


def coco_evaluate(dataset_config: ml_collections.ConfigDict, variables: dict, detect_step: Callable,
                  mesh: Any, *, global_batch_size: int, max_candidates: int,
                  results_path: Optional[str] = None) -> dict:
  """{"AP", "AP50", "AP75", "APs", "APm", "APl"} (fractions) of `variables` on the eval split,
  with masks also "segm_AP" ... "segm_APl"; every process calls it. `detect_step` is
  `compile_detect_step(model, mesh)`, `max_candidates` its model's cap on the pairs that enter
  the final NMS: images that exceeded it are counted and reported in one warning line."""
  from lct_flax.detection import coco_eval  # TensorFlow and pycocotools
  from lct_flax.detection import data

  data_sharding = parallel.batch_sharding(mesh)
  evaluator = coco_eval.CocoEvaluator(dataset_config)
  candidates = []
  for batch in data.create_eval_iterator(dataset_config, global_batch_size=global_batch_size):
    device = jax.tree.map(lambda x: jax.make_array_from_process_local_data(data_sharding, x),
                          steps.device_batch(batch, steps.EVAL_KEYS))
    detections = parallel.host_local(detect_step(variables, device), mesh)
    candidates.append(np.asarray(detections["num_candidates"])[np.asarray(batch["mask"], bool)])
    evaluator.add(batch, detections)
  warn_about_capped_candidates(np.concatenate(candidates or [np.zeros(0, np.int32)]),
                               max_candidates)
  return evaluator.evaluate(results_path=results_path)


def warn_about_capped_candidates(num_candidates: np.ndarray, max_candidates: int) -> None:
  """One warning line when some images had more (box, class) pairs above the score threshold
  than the final NMS takes: their lowest-scoring pairs were left out, which mmdetection v1 (no
  cap) does not do, so the AP may differ from its."""
  capped = num_candidates > max_candidates
  if capped.any():
    logging.warning(
        "%d of %d images had more (box, class) pairs above the score threshold than "
        "model.max_candidates=%d (up to %d); their lowest-scoring pairs were left out of the "
        "final NMS. Raise --config.model.max_candidates to %d to evaluate all of them.",
        int(capped.sum()), capped.size, max_candidates, int(num_candidates.max()),
        int(num_candidates.max()))


def evaluate_export(export_dir: str, model: Any, variables: dict,
                    config: ml_collections.ConfigDict, *, split: Optional[str] = None,
                    data_dir: Optional[str] = None, batch_size: Optional[int] = None,
                    results_dir: Optional[str] = None) -> dict:
  """COCO box (and mask) AP of a detector export on its dataset's eval split (or `split`), with
  the result record `python -m lct_flax.evaluate` writes; the COCO results JSONs go to
  `results_dir` (default: the export's directory)."""
  from lct_flax.detection import data

  dataset_config = ml_collections.ConfigDict(config.dataset.to_dict())
  if split is not None:
    dataset_config.eval_split = split
  if data_dir is not None:
    dataset_config.data_dir = data_dir
  info = data.get_dataset_info(dataset_config)
  if info.num_classes != int(config.model.num_classes):
    raise ValueError(f"{dataset_config.name} has {info.num_classes} classes but the detector in "
                     f"{export_dir} has {config.model.num_classes}; evaluate it on the dataset "
                     f"it was trained on.")
  mesh = parallel.create_mesh()
  batch_size = batch_size or mesh.devices.size
  parallel.check_batch_size(batch_size, mesh)
  start = time.perf_counter()
  results_path = os.path.join(results_dir or export_dir,
                              f"detections_{dataset_config.eval_split}.json")
  metrics = coco_evaluate(dataset_config, jax.device_put(variables,
                                                         parallel.replicated_sharding(mesh)),
                          compile_detect_step(model, mesh), mesh, global_batch_size=batch_size,
                          max_candidates=model.settings.max_candidates,
                          results_path=results_path)
  return {**metrics, "count": int(info.num_eval_images), "dataset": dataset_config.name,
          "split": dataset_config.eval_split, "data_dir": dataset_config.data_dir,
          "batch_size": int(batch_size), "num_devices": int(mesh.devices.size),
          "seconds": round(time.perf_counter() - start, 3), "export": export_dir,
          "results": results_path, "step": config.get("source", {}).get("step"),
          "model": config.model.to_dict()}


COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def describe_columns(metrics: dict, prefix: str = "") -> str:
  """The six columns of Tables 6-7 in percent ("-" where the split has no object of that size)
  of `metrics[prefix + column]`: the box ones, and with masks (prefix "segm_") the mask ones."""
  def percent(value):
    return f"{100 * value:.1f}" if value >= 0 else "-"
  lines = []
  for kind, key in (("bbox", prefix), ("segm", f"{prefix}segm_")):
    if f"{key}AP" in metrics:
      lines.append(f"{kind}  " + "  ".join(f"{c} {percent(metrics[key + c])}" for c in COLUMNS))
  return "  |  ".join(lines)


def format_result(result: dict) -> str:
  """Table 6's columns (and a Mask R-CNN's Table 7 columns) in percent, as the paper prints."""
  return (f"{result['dataset']}:{result['split']}  {describe_columns(result)}  "
          f"({result['count']} images)")
