"""Detection geometry (NumPy) against transcriptions of mmcv / mmdetection v1 and torchvision."""

import numpy as np
import pytest

from lct_flax.detection import data_config
from lct_flax.detection import sampler
from lct_flax.detection import transforms

MMDET = data_config.BoxConvention.mmdet_v1()
TORCHVISION = data_config.BoxConvention.torchvision()


def mmcv_rescale_size(w, h, scale):
  """mmcv.rescale_size((w, h), scale) for a tuple scale, as mmcv 0.2 writes it."""
  max_long_edge, max_short_edge = max(scale), min(scale)
  scale_factor = min(max_long_edge / max(h, w), max_short_edge / min(h, w))
  return (int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)), scale_factor


def mmdet_v1_gt_boxes(bbox_xywh, scale_factor, img_shape, flip):
  """mmdetection v1: _parse_ann_info (+1), Resize._resize_bboxes (clip W-1), bbox_flip (-1)."""
  boxes = np.array([[x, y, x + w - 1, y + h - 1] for x, y, w, h in bbox_xywh], np.float32)
  boxes = boxes * scale_factor
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, img_shape[1] - 1)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, img_shape[0] - 1)
  if flip:
    flipped = boxes.copy()
    flipped[..., 0::4] = img_shape[1] - boxes[..., 2::4] - 1
    flipped[..., 2::4] = img_shape[1] - boxes[..., 0::4] - 1
    boxes = flipped
  return boxes


def torchvision_gt_boxes(bbox_xywh, original, resized, flip):
  """torchvision: xywh -> xyxy, transform.resize_boxes (per-axis ratios), x -> W - x flips."""
  boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in bbox_xywh], np.float64)
  ratio_h, ratio_w = resized[0] / original[0], resized[1] / original[1]
  boxes = boxes * [ratio_w, ratio_h, ratio_w, ratio_h]
  if flip:
    boxes[:, [0, 2]] = resized[1] - boxes[:, [2, 0]]
  return boxes


@pytest.mark.parametrize("height,width", [(480, 640), (427, 640), (640, 480), (500, 1500),
                                          (1500, 500), (800, 1333), (96, 128), (1, 1),
                                          (333, 333), (612, 612), (375, 500)])
@pytest.mark.parametrize("img_scale", [(1333, 800), (160, 128), (800, 1333)])
def test_rescale_size_is_mmcv_rule(height, width, img_scale):
  (new_w, new_h), factor = mmcv_rescale_size(width, height, img_scale)
  assert transforms.rescale_size(height, width, img_scale) == (new_h, new_w, factor)


def test_rescale_size_known_values():
  assert transforms.rescale_size(480, 640, (1333, 800))[:2] == (800, 1067)
  assert transforms.rescale_size(427, 640, (1333, 800))[:2] == (800, 1199)
  assert transforms.rescale_size(500, 1500, (1333, 800))[:2] == (444, 1333)
  assert transforms.rescale_size(96, 128, (160, 128))[:2] == (120, 160)


def test_box_scale_follows_the_convention():
  new_h, new_w, factor = transforms.rescale_size(427, 640, (1333, 800))
  assert transforms.box_scale(427, 640, (new_h, new_w), factor, MMDET) == (factor, factor)
  assert transforms.box_scale(427, 640, (new_h, new_w), factor, TORCHVISION) == (
      new_h / 427, new_w / 640)


@pytest.mark.parametrize("flip", [False, True])
def test_gt_boxes_match_mmdetection_v1(flip):
  rng = np.random.default_rng(0)
  height, width = 427, 640
  new_h, new_w, factor = transforms.rescale_size(height, width, (1333, 800))
  xywh = np.column_stack([rng.uniform(0, 600, 20), rng.uniform(0, 400, 20),
                          rng.uniform(1, 200, 20), rng.uniform(1, 200, 20)])
  xywh[0] = [-5, -3, width + 20, height + 10]  # beyond the image: clipped to W - 1, H - 1
  ours = transforms.transform_boxes(transforms.annotation_boxes(xywh, MMDET), (factor, factor),
                                    (new_h, new_w), flip, MMDET)
  reference = mmdet_v1_gt_boxes(xywh, factor, (new_h, new_w), flip)
  np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-3)
  np.testing.assert_allclose(ours[0], [0, 0, new_w - 1, new_h - 1], atol=1e-3)


@pytest.mark.parametrize("flip", [False, True])
def test_gt_boxes_match_torchvision(flip):
  rng = np.random.default_rng(1)
  height, width = 375, 500
  new_h, new_w, factor = transforms.rescale_size(height, width, (1333, 800))
  scale = transforms.box_scale(height, width, (new_h, new_w), factor, TORCHVISION)
  xywh = np.column_stack([rng.uniform(0, 400, 10), rng.uniform(0, 300, 10),
                          rng.uniform(1, 90, 10), rng.uniform(1, 70, 10)])
  ours = transforms.transform_boxes(transforms.annotation_boxes(xywh, TORCHVISION), scale,
                                    (new_h, new_w), flip, TORCHVISION)
  np.testing.assert_allclose(ours, torchvision_gt_boxes(xywh, (height, width), (new_h, new_w),
                                                        flip), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("convention", [MMDET, TORCHVISION], ids=lambda c: c.name)
def test_results_xywh_undo_the_resize(convention):
  xywh = np.array([[10.5, 20.25, 100.0, 50.75], [0.0, 0.0, 1.0, 1.0], [300.0, 1.0, 39.5, 420.0]])
  new_h, new_w, factor = transforms.rescale_size(427, 640, (1333, 800))
  scale = transforms.box_scale(427, 640, (new_h, new_w), factor, convention)
  resized = transforms.transform_boxes(transforms.annotation_boxes(xywh, convention), scale,
                                       (new_h, new_w), False, convention)
  np.testing.assert_allclose(transforms.results_xywh(resized, scale, convention), xywh,
                             atol=2e-4)


def test_mmdet_results_are_xyxy2xywh_with_plus_one():
  # mmdetection v1 core/evaluation/coco_utils.py: [x1, y1, x2 - x1 + 1, y2 - y1 + 1] after
  # dividing the boxes by scale_factor.
  boxes = np.array([[20.0, 30.0, 59.0, 89.0]])
  np.testing.assert_allclose(transforms.results_xywh(boxes, (2.0, 2.0), MMDET),
                             [[10.0, 15.0, 20.5, 30.5]])
  np.testing.assert_allclose(transforms.results_xywh(boxes, (2.0, 4.0), TORCHVISION),
                             [[5.0, 15.0, 9.75, 29.5]])


def test_canvas_choice():
  canvases = ((800, 1344), (1344, 800))
  # Landscape -> landscape canvas, portrait -> portrait; a square fits both equally well and
  # goes with mmdetection's flag (landscape iff w > h): portrait.
  assert transforms.choose_canvas(480, 640, (800, 1067), canvases) == 0
  assert transforms.choose_canvas(640, 480, (1067, 800), canvases) == 1
  assert transforms.choose_canvas(500, 500, (800, 800), canvases) == 1
  assert transforms.choose_canvas(500, 500, (800, 800), canvases[::-1]) == 0
  # The smallest canvas that holds the image wins over orientation.
  assert transforms.choose_canvas(100, 120, (100, 120), ((128, 128), (128, 160))) == 0
  assert transforms.choose_canvas(100, 150, (100, 150), ((128, 128), (128, 160))) == 1
  assert transforms.choose_canvas(480, 640, (800, 1067), ((64, 64),)) is None


def test_train_plan_groups_by_canvas_and_covers_every_image():
  canvas_of_image = np.array([0] * 7 + [1] * 5 + [2] * 1)
  plan = sampler.train_plan(canvas_of_image, 3, 4, seed=0, epoch=0, flip_ratio=0.5)
  assert len(plan.canvas) == sampler.steps_per_epoch(canvas_of_image, 3, 4) == 2 + 2 + 1
  for images, canvas in zip(plan.images, plan.canvas):
    assert set(canvas_of_image[images]) == {canvas}  # one batch, one canvas
  assert set(plan.images.reshape(-1)) == set(range(13))
  # Groups are padded by repeating their own images (mmdetection's GroupSampler).
  assert np.bincount(plan.images.reshape(-1), minlength=13).max() <= 4
  assert plan.flip.dtype == bool and 0 < plan.flip.mean() < 1
  again = sampler.train_plan(canvas_of_image, 3, 4, seed=0, epoch=0, flip_ratio=0.5)
  np.testing.assert_array_equal(again.images, plan.images)
  np.testing.assert_array_equal(again.flip, plan.flip)
  other = sampler.train_plan(canvas_of_image, 3, 4, seed=0, epoch=1, flip_ratio=0.5)
  assert not np.array_equal(other.images, plan.images)
  no_flip = sampler.train_plan(canvas_of_image, 3, 4, seed=0, epoch=0, flip_ratio=0.0)
  assert not no_flip.flip.any()


def test_process_shares_split_every_global_batch():
  canvas_of_image = np.array([0, 1] * 9)
  plan = sampler.train_plan(canvas_of_image, 2, 6, seed=3, epoch=2, flip_ratio=0.5)
  shares = [plan.process_share(i, 3) for i in range(3)]
  np.testing.assert_array_equal(np.concatenate([s.images for s in shares], axis=1), plan.images)
  np.testing.assert_array_equal(np.concatenate([s.flip for s in shares], axis=1), plan.flip)
  assert all(np.array_equal(s.canvas, plan.canvas) for s in shares)


def test_eval_plan_holds_every_image_once_and_pads():
  canvas_of_image = np.array([1, 0, 1, 1, 0, 1, 1])
  plan = sampler.eval_plan(canvas_of_image, 2, 4)
  real = plan.images[plan.images != sampler.PADDING]
  assert sorted(real.tolist()) == list(range(7))
  np.testing.assert_array_equal(plan.canvas, [0, 1, 1])
  np.testing.assert_array_equal(plan.images[0], [1, 4, -1, -1])
  np.testing.assert_array_equal(plan.images[2], [6, -1, -1, -1])
