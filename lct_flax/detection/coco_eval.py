"""COCO evaluation: detections -> a standard COCO results JSON -> pycocotools' COCOeval.

Results are in COCO's own terms: original image ids, original category ids, ``bbox`` ``[x, y, w,
h]`` in original image pixels (boxes divided by the batch's ``scale``, widths by the dataset's box
convention: mmdetection v1's ``x2 - x1 + 1`` or torchvision's ``x2 - x1``), ``score``. The ground
truth is rebuilt from the prepared records (``data.read_annotations``), which keep the annotation
file exactly, so no JSON file is needed at evaluation time.

``evaluate`` returns the first six COCOeval statistics, the columns of the paper's Table 6 (and,
for ``segm``, Table 7): AP (IoU 0.50:0.95), AP50, AP75, APs, APm, APl, as fractions (-1 where
the split has no ground truth of that size, as pycocotools reports). ``iou_type`` is ``bbox``, or
``segm`` for results with an RLE ``segmentation``: a Mask R-CNN's masks pasted into the original
image (``segmentation.result_segmentations``, as ``Convention.mask_paste`` of the dataset's box
convention pastes them), with the box's score. mmdetection v1's segm results also carry the
``bbox`` (core/evaluation/coco_utils.py segm2json), so pycocotools' ``loadRes`` takes each
detection's area (which decides APs/APm/APl) from its box; torchvision's reference evaluation
writes none, and the area comes from the mask. Each convention writes its own.

``CocoEvaluator`` collects the detections of every eval batch on every process (a Mask R-CNN's
masks pasted and RLE-encoded there, on the host), gathers them on process 0, checks that every
image of the split was evaluated exactly once, writes the results JSON (and the segm results
beside it, ``segm_results_path``), runs COCOeval, prints the table and returns the metrics on
every process (segm ones prefixed ``segm_``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import jax
from jax.experimental import multihost_utils
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lct_flax import fileio
from lct_flax.detection import data
from lct_flax.detection import data_config
from lct_flax.detection import segmentation
from lct_flax.detection import transforms
from lct_flax.detection.data_config import DetectionDataError

COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[:6]
IOU_TYPES = ("bbox", "segm")


def ground_truth(dataset_config, split=None) -> COCO:
  """pycocotools ``COCO`` of the split (default ``dataset.eval_split``), from the records."""
  coco = COCO()
  coco.dataset = data.read_annotations(dataset_config, split)
  with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
    coco.createIndex()
  return coco


def results_from_detections(*, image_ids, scales, boxes, scores, labels, valid, category_ids,
                            convention: data_config.BoxConvention,
                            segmentations=None) -> list[dict]:
  """COCO results (one dict per valid detection) from per-image arrays.

  ``image_ids`` (N,) original ids; ``scales`` (N, 2) the batches' ``scale``; ``boxes`` (N, D, 4)
  xyxy in resized-image pixels; ``scores`` (N, D); ``labels`` (N, D) contiguous 0..K-1;
  ``valid`` (N, D) which detections exist; ``category_ids[label]`` the original category id.
  With ``segmentations`` (``{image_id: [RLE of each valid detection, in order]}``) the segm
  results: each gets its ``segmentation``, and keeps its ``bbox`` in mmdetection v1's convention
  only (see the module docstring).
  """
  category_ids = np.asarray(category_ids)
  results = []
  for n in range(len(image_ids)):
    keep = np.flatnonzero(valid[n])
    if not len(keep):
      continue
    xywh = transforms.results_xywh(np.asarray(boxes[n])[keep], scales[n], convention)
    for d, (box, score, label) in enumerate(zip(xywh, np.asarray(scores[n])[keep],
                                                np.asarray(labels[n])[keep])):
      result = {"image_id": int(image_ids[n]), "category_id": int(category_ids[label]),
                "bbox": [float(v) for v in box], "score": float(score)}
      if segmentations is not None:
        result["segmentation"] = segmentations[int(image_ids[n])][d]
        if convention.name != "mmdet_v1":
          del result["bbox"]
      results.append(result)
  return results


def segm_results_path(results_path: str) -> str:
  """Where the segm results go beside the box results: detections.json -> detections.segm.json
  (mmdetection writes <prefix>.bbox.json and <prefix>.segm.json)."""
  root, extension = os.path.splitext(results_path)
  return f"{root}.segm{extension or '.json'}"


def evaluate(coco_gt: COCO, results: list[dict], iou_type: str = "bbox") -> dict:
  """COCOeval of ``results`` against ``coco_gt``: ``{column: value}`` for ``COLUMNS``."""
  if iou_type not in IOU_TYPES:
    raise DetectionDataError(f"iou_type={iou_type!r} is not one of {IOU_TYPES}.")
  if not results:  # pycocotools cannot load an empty result list; nothing detected scores 0.
    return {column: 0.0 for column in COLUMNS}
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress and summary lines
    coco_dt = coco_gt.loadRes(results)
    evaluation = COCOeval(coco_gt, coco_dt, iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  return {column: float(value) for column, value in zip(COLUMNS, evaluation.stats[:6])}


def format_table(metrics_by_type: dict) -> str:
  """A markdown table, one row per IoU type, in percent as in the paper's Tables 6 and 7."""
  lines = ["| | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
  for iou_type, metrics in metrics_by_type.items():
    lines.append(f"| {iou_type} | " + " | ".join(
        f"{100 * metrics[c]:.1f}" if metrics[c] >= 0 else "-" for c in COLUMNS) + " |")
  return "\n".join(lines)


def write_results(path: str, results: list[dict]) -> None:
  """The results JSON (a compact list of detections, as COCO's tools read it), atomically."""
  fileio.atomic_write(path, lambda f: f.write(json.dumps(results).encode()))


class CocoEvaluator:
  """Detections of one pass over an eval split, evaluated by COCOeval ``bbox`` (and ``segm``).

  Call ``add(batch, detections)`` for every batch of ``data.create_eval_iterator`` on every
  process, with host-local numpy arrays: ``batch`` the eval batch (``image_id``, ``scale``,
  ``original_shape``, ``mask``), ``detections`` its detections (``boxes`` (B, D, 4) xyxy in
  input pixels, ``scores`` (B, D), ``labels`` (B, D) 0..K-1, ``valid`` (B, D), and a Mask
  R-CNN's ``masks`` (B, D, m, m) probabilities, which make it a segm evaluation too); then
  ``evaluate()`` on every process.
  """

  def __init__(self, dataset_config, *, split=None):
    self._dataset_config = dataset_config
    self._split = split
    self._convention = data_config.settings(dataset_config).box_convention
    self._category_ids = data.get_dataset_info(dataset_config).category_ids
    self._parts = []
    self._segmentations = None   # {image_id: [RLE of each valid detection]} once masks come

  def add(self, batch: dict, detections: dict) -> None:
    mask = np.asarray(batch["mask"], bool)
    part = {
        # int32: the gather goes through JAX arrays (no int64 without jax_enable_x64).
        "image_id": np.where(mask, batch["image_id"], -1).astype(np.int32),
        "scale": np.asarray(batch["scale"], np.float32),
        "boxes": np.asarray(detections["boxes"], np.float32),
        "scores": np.asarray(detections["scores"], np.float32),
        "labels": np.asarray(detections["labels"], np.int32),
        "valid": np.asarray(detections["valid"], bool) & mask[:, None],
    }
    self._parts.append(part)
    if "masks" in detections:
      if self._segmentations is None:
        self._segmentations = {}
      for n in np.flatnonzero(mask):
        keep = np.flatnonzero(part["valid"][n])
        self._segmentations[int(part["image_id"][n])] = segmentation.result_segmentations(
            np.asarray(detections["masks"][n])[keep], part["boxes"][n][keep], part["scale"][n],
            batch["original_shape"][n], mode=self._convention.name)

  def _gathered(self):
    if not self._parts:
      raise DetectionDataError("CocoEvaluator.evaluate() before any add(); evaluate the batches "
                               "of data.create_eval_iterator first.")
    local = {key: np.concatenate([part[key] for part in self._parts]) for key in self._parts[0]}
    if jax.process_count() == 1:
      return local
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(local, tiled=True))

  def _gathered_segmentations(self):
    """Every process's segmentations (JSON bytes through padded uint8 arrays), or None."""
    if self._segmentations is None or jax.process_count() == 1:
      return self._segmentations
    encoded = np.frombuffer(json.dumps(self._segmentations).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(encoded))))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(encoded)] = encoded
    everything = np.asarray(multihost_utils.process_allgather(padded))
    merged = {}
    for row, length in zip(everything, lengths):
      merged.update({int(k): v for k, v in json.loads(row[:length].tobytes()).items()})
    return merged

  def evaluate(self, results_path: str | None = None) -> dict:
    """Gathers on process 0, writes ``results_path`` (if given; the segm results to
    ``segm_results_path(results_path)``), prints and returns the metrics.

    Every process gets the same ``{column: value}`` (fractions; with masks also
    ``{"segm_" + column: value}``). Raises DetectionDataError when the batches did not cover
    every image of the split exactly once.
    """
    gathered = self._gathered()
    segmentations = self._gathered_segmentations()
    names = list(COLUMNS) + ([f"segm_{c}" for c in COLUMNS] if segmentations is not None else [])
    values = np.zeros(len(names), np.float64)
    if jax.process_index() == 0:
      coco_gt = ground_truth(self._dataset_config, self._split)
      _check_coverage(gathered["image_id"], coco_gt)
      detections = dict(
          image_ids=gathered["image_id"], scales=gathered["scale"], boxes=gathered["boxes"],
          scores=gathered["scores"], labels=gathered["labels"], valid=gathered["valid"],
          category_ids=self._category_ids, convention=self._convention)
      results = results_from_detections(**detections)
      if results_path:
        write_results(results_path, results)
      metrics = {"bbox": evaluate(coco_gt, results, "bbox")}
      if segmentations is not None:
        segm_results = results_from_detections(**detections, segmentations=segmentations)
        if results_path:
          write_results(segm_results_path(results_path), segm_results)
        metrics["segm"] = evaluate(coco_gt, segm_results, "segm")
      print(format_table(metrics))
      values = np.array([metrics[kind][c] for kind in metrics for c in COLUMNS], np.float64)
    if jax.process_count() > 1:
      values = np.asarray(multihost_utils.broadcast_one_to_all(values.astype(np.float32)))
    return {name: float(value) for name, value in zip(names, values)}


def _check_coverage(image_ids, coco_gt):
  ids = image_ids[image_ids >= 0]
  unique, counts = np.unique(ids, return_counts=True)
  expected = set(coco_gt.getImgIds())
  if len(ids) != len(expected) or set(unique.tolist()) != expected:
    raise DetectionDataError(
        f"the eval batches held {len(unique)} distinct images ({int((counts > 1).sum())} more "
        f"than once) of the split's {len(expected)}; evaluate every batch of one full "
        f"data.create_eval_iterator pass on every process.")
