"""COCO evaluation through real pycocotools: results JSON conventions, AP 1.0 for the ground
truth, exactly-once coverage, and the gather over two real JAX processes."""

import collections
import json
import os
import socket
import subprocess
import sys

import numpy as np
from pycocotools.coco import COCO
import pytest

from child_env import child_environment
from coco_eval_worker import ground_truth_detections
from lct_flax.datasets import coco_layout
from lct_flax.detection import coco_eval
from lct_flax.detection import data
from lct_flax.detection import data_config
from lct_flax.detection import segmentation
from lct_flax.detection.data_config import DetectionDataError

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coco_eval_worker.py")
CATEGORY_IDS = (2, 5, 9, 14)


def _evaluator_over(config, *, process_count=1, detections=ground_truth_detections):
  """A CocoEvaluator fed every eval batch of ``process_count`` emulated processes."""
  evaluator = coco_eval.CocoEvaluator(config)
  coco_gt = coco_eval.ground_truth(config)
  convention = data_config.settings(config).box_convention
  for process_index in range(process_count):
    for batch in data.create_eval_iterator(config, global_batch_size=4,
                                           process_index=process_index,
                                           process_count=process_count):
      evaluator.add(batch, detections(batch, coco_gt, CATEGORY_IDS, convention))
  return evaluator


def _annotations(layout):
  with open(os.path.join(layout.root, coco_layout.SPLITS["validation"][1])) as f:
    return json.load(f)


@pytest.mark.parametrize("convention", ["mmdet_v1", "torchvision"])
def test_ground_truth_as_detections_scores_ap_1(shapes_config, coco_shapes_layout, tmp_path,
                                                convention, capsys):
  shapes_config.box_convention = convention
  metrics = _evaluator_over(shapes_config, process_count=2).evaluate(str(tmp_path / "r.json"))
  assert set(metrics) == set(coco_eval.COLUMNS)
  for column in ("AP", "AP50", "AP75", "APs", "APm"):
    assert metrics[column] == pytest.approx(1.0), column
  assert metrics["APl"] == -1.0  # no large (> 96^2 px) object in 96-160 px images
  assert "| bbox | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | - |" in capsys.readouterr().out
  # The results JSON: original image and category ids, xywh in original pixels.
  results = json.loads((tmp_path / "r.json").read_text())
  expected = collections.defaultdict(list)
  for a in _annotations(coco_shapes_layout)["annotations"]:
    if not a["iscrowd"]:
      expected[a["image_id"]].append((a["category_id"], a["bbox"]))
  found = collections.defaultdict(list)
  for r in results:
    assert set(r) == {"image_id", "category_id", "bbox", "score"} and r["score"] == 1.0
    found[r["image_id"]].append((r["category_id"], r["bbox"]))
  assert found.keys() == expected.keys()
  for image_id, detections in found.items():
    assert [c for c, _ in detections] == [c for c, _ in expected[image_id]]
    np.testing.assert_allclose([b for _, b in detections], [b for _, b in expected[image_id]],
                               atol=2e-3)


@pytest.mark.parametrize("convention", ["mmdet_v1", "torchvision"])
def test_ground_truth_masks_as_segm_results_score_ap_1(shapes_config, convention):
  shapes_config.box_convention = convention
  coco_gt = coco_eval.ground_truth(shapes_config)
  box_convention = data_config.settings(shapes_config).box_convention
  parts, segmentations = collections.defaultdict(list), {}
  for batch in data.create_eval_iterator(shapes_config, global_batch_size=4):
    detections = ground_truth_detections(batch, coco_gt, CATEGORY_IDS, box_convention)
    for n in np.flatnonzero(batch["mask"]):
      image = coco_gt.imgs[int(batch["image_id"][n])]
      masks = [segmentation.decode(a["segmentation"], image["height"], image["width"])
               for a in coco_gt.imgToAnns[image["id"]] if not a["iscrowd"]]
      segmentations[image["id"]] = segmentation.encode(np.asarray(masks).reshape(
          -1, image["height"], image["width"]))
      parts["image_ids"].append(image["id"])
      parts["scales"].append(batch["scale"][n])
      for key in ("boxes", "scores", "labels", "valid"):
        parts[key].append(detections[key][n])
  results = coco_eval.results_from_detections(
      **{key: np.asarray(value) for key, value in parts.items()}, category_ids=CATEGORY_IDS,
      convention=box_convention, segmentations=segmentations)
  with_bbox = convention == "mmdet_v1"   # mmdet v1's segm2json keeps the box; torchvision not
  assert all(("bbox" in r) == with_bbox and isinstance(r["segmentation"]["counts"], str)
             for r in results)
  metrics = coco_eval.evaluate(coco_gt, results, "segm")
  for column in ("AP", "AP50", "AP75", "APs", "APm"):
    assert metrics[column] == pytest.approx(1.0), column
  assert coco_eval.segm_results_path("/r/detections_12.json") == "/r/detections_12.segm.json"


def test_results_json_undoes_the_resize_in_the_dataset_convention():
  batch = {"image_id": np.array([397133]), "scale": np.array([[2.0, 2.0]], np.float32)}
  detections = dict(boxes=np.array([[[20.0, 30.0, 59.0, 89.0], [0, 0, 9, 9]]], np.float32),
                    scores=np.array([[0.9, 0.1]]), labels=np.array([[3, 0]]),
                    valid=np.array([[True, False]]))
  for convention, width, height in (("mmdet_v1", 20.5, 30.5), ("torchvision", 19.5, 29.5)):
    results = coco_eval.results_from_detections(
        image_ids=batch["image_id"], scales=batch["scale"], category_ids=CATEGORY_IDS,
        convention=data_config.BoxConvention.named(convention), **detections)
    assert results == [{"image_id": 397133, "category_id": 14,
                        "bbox": [10.0, 15.0, width, height], "score": pytest.approx(0.9)}]


def perturbed_detections(batch, coco_gt, category_ids, convention):
  """The ground truth shifted by a few pixels, with falling scores and one wrong class."""
  detections = ground_truth_detections(batch, coco_gt, category_ids, convention)
  rng = np.random.default_rng(int(batch["image_id"].max()) % 1000)
  detections["boxes"] += rng.uniform(-3, 3, detections["boxes"].shape).astype(np.float32)
  detections["scores"] = rng.uniform(0.1, 1.0, detections["scores"].shape).astype(np.float32)
  detections["labels"][:, 1] = (detections["labels"][:, 1] + 1) % 4
  return detections


def test_ground_truth_from_the_records_evaluates_as_the_annotation_file(shapes_config,
                                                                         coco_shapes_layout):
  evaluator = _evaluator_over(shapes_config, detections=perturbed_detections)
  gathered = evaluator._gathered()  # pylint: disable=protected-access
  results = coco_eval.results_from_detections(
      image_ids=gathered["image_id"], scales=gathered["scale"], boxes=gathered["boxes"],
      scores=gathered["scores"], labels=gathered["labels"], valid=gathered["valid"],
      category_ids=CATEGORY_IDS, convention=data_config.BoxConvention.mmdet_v1())
  from_file = coco_eval.evaluate(
      COCO(os.path.join(coco_shapes_layout.root, coco_layout.SPLITS["validation"][1])), results)
  from_records = coco_eval.evaluate(coco_eval.ground_truth(shapes_config), results)
  assert from_records == from_file
  assert 0.05 < from_records["AP"] < 0.95


def test_every_image_must_be_evaluated_exactly_once(shapes_config):
  coco_gt = coco_eval.ground_truth(shapes_config)
  convention = data_config.settings(shapes_config).box_convention
  batches = list(data.create_eval_iterator(shapes_config, global_batch_size=4))
  partial = coco_eval.CocoEvaluator(shapes_config)
  partial.add(batches[0], ground_truth_detections(batches[0], coco_gt, CATEGORY_IDS, convention))
  with pytest.raises(DetectionDataError, match="held 4 distinct images .* of the split's 10"):
    partial.evaluate()
  repeated = coco_eval.CocoEvaluator(shapes_config)
  for batch in batches + batches[:1]:
    repeated.add(batch, ground_truth_detections(batch, coco_gt, CATEGORY_IDS, convention))
  with pytest.raises(DetectionDataError, match=r"\(4 more than once\)"):
    repeated.evaluate()


def test_no_detections_score_zero(shapes_config):
  metrics = _evaluator_over(shapes_config, detections=lambda batch, *_: dict(
      boxes=np.zeros((4, 1, 4)), scores=np.zeros((4, 1)), labels=np.zeros((4, 1), int),
      valid=np.zeros((4, 1), bool))).evaluate()
  assert metrics == {column: 0.0 for column in coco_eval.COLUMNS}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_gather_on_process_0_and_count_every_image_once(shapes_config, tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, WORKER, f"--data_dir={shapes_config.data_dir}", f"--output={tmp_path}",
       f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
      env=child_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  metrics = [json.loads((tmp_path / f"metrics_{i}.json").read_text()) for i in range(2)]
  assert metrics[0] == metrics[1]
  assert metrics[0]["AP"] == pytest.approx(1.0)
  assert 0.1 < metrics[0]["segm_AP"] < 0.6     # masks filling the boxes of non-rectangles
  assert "| bbox | 100.0 |" in outputs[0] and "| bbox |" not in outputs[1]
  assert "| segm |" in outputs[0]
  results = json.loads((tmp_path / "results.json").read_text())
  gt = data.read_annotations(shapes_config)
  assert len(results) == sum(not a["iscrowd"] for a in gt["annotations"])
  segm_results = json.loads((tmp_path / "results.segm.json").read_text())
  assert [{k: r[k] for k in results[0]} for r in segm_results] == results
  assert not (tmp_path / "results.json.tmp").exists()
