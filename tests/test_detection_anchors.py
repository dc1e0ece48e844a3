"""Anchors of both references' generators against NumPy transcriptions, known values and
torchvision's AnchorGenerator; the allowed-border flags of mmdet v1's RPN training."""

import numpy as np
import pytest

from lct_flax.detection import anchors
from detection_reference import torchvision_modules


def numpy_mmdet_v1_anchors(stride, feature_shape, ratios=(0.5, 1.0, 2.0), scale=8.0):
  """mmdet v1.0 AnchorGenerator(base_size=stride, [scale], ratios).grid_anchors, one by one."""
  out = []
  centre = 0.5 * (stride - 1)
  for y in range(feature_shape[0]):
    for x in range(feature_shape[1]):
      for ratio in ratios:
        h_ratio = np.sqrt(np.float32(ratio))
        w = np.float32(stride) * (np.float32(1) / h_ratio) * np.float32(scale)
        h = np.float32(stride) * h_ratio * np.float32(scale)
        base = [centre - 0.5 * (w - 1), centre - 0.5 * (h - 1), centre + 0.5 * (w - 1),
                centre + 0.5 * (h - 1)]
        out.append(np.round(np.float32(base)) + [x * stride, y * stride] * 2)
  return np.array(out, np.float32)


def numpy_torchvision_anchors(size, step_yx, feature_shape, ratios=(0.5, 1.0, 2.0)):
  """torchvision AnchorGenerator: zero-centred round(-/+ w/2), shifted by step per axis."""
  out = []
  for y in range(feature_shape[0]):
    for x in range(feature_shape[1]):
      for ratio in ratios:
        h_ratio = np.sqrt(np.float32(ratio))
        w, h = (np.float32(1) / h_ratio) * np.float32(size), h_ratio * np.float32(size)
        base = np.round(np.float32([-w, -h, w, h]) / np.float32(2))
        out.append(base + [x * step_yx[1], y * step_yx[0]] * 2)
  return np.array(out, np.float32)


def test_mmdet_v1_stride_4_base_anchors_known_values():
  """The well-known mmdet v1 / Detectron P2 anchors (size 32, ratios 0.5, 1, 2)."""
  np.testing.assert_array_equal(anchors.base_anchors(4, geometry="mmdet_v1"),
                                [[-21, -9, 24, 12], [-14, -14, 17, 17], [-9, -21, 12, 24]])
  np.testing.assert_array_equal(anchors.base_anchors(4, geometry="torchvision"),
                                [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])


@pytest.mark.parametrize("canvas", [(64, 96), (96, 160)])
def test_level_anchors_match_numpy_transcriptions(canvas):
  mmdet = anchors.level_anchors(canvas, geometry="mmdet_v1")
  torch_like = anchors.level_anchors(canvas, geometry="torchvision")
  shapes = anchors.feature_shapes(canvas)
  assert shapes[-1] == (-(-canvas[0] // 64), -(-canvas[1] // 64))
  for level, (stride, shape) in enumerate(zip(anchors.FPN_STRIDES, shapes)):
    assert mmdet[level].shape == (shape[0] * shape[1] * 3, 4)
    np.testing.assert_array_equal(mmdet[level], numpy_mmdet_v1_anchors(stride, shape))
    step = (canvas[0] // shape[0], canvas[1] // shape[1])
    np.testing.assert_array_equal(torch_like[level],
                                  numpy_torchvision_anchors(8 * stride, step, shape))


def test_torchvision_steps_by_canvas_over_feature_size():
  """96 rows: P6 has 2 rows, so torchvision steps them 48 px apart, mmdet v1 64."""
  p6_torch = anchors.level_anchors((96, 128), geometry="torchvision")[-1].reshape(2, 2, 3, 4)
  p6_mmdet = anchors.level_anchors((96, 128), geometry="mmdet_v1")[-1].reshape(2, 2, 3, 4)
  assert p6_torch[1, 0, 0, 1] - p6_torch[0, 0, 0, 1] == 48
  assert p6_mmdet[1, 0, 0, 1] - p6_mmdet[0, 0, 0, 1] == 64


def test_against_torchvision_anchor_generator():
  torch, torchvision = torchvision_modules()
  from torchvision.models.detection.anchor_utils import AnchorGenerator
  from torchvision.models.detection.image_list import ImageList
  canvas = (96, 160)
  shapes = anchors.feature_shapes(canvas)
  generator = AnchorGenerator(sizes=((32,), (64,), (128,), (256,), (512,)),
                              aspect_ratios=((0.5, 1.0, 2.0),) * 5)
  images = ImageList(torch.zeros(1, 3, *canvas), [canvas])
  features = [torch.zeros(1, 1, *s) for s in shapes]
  expected = generator(images, features)[0].numpy()
  ours = np.concatenate(anchors.level_anchors(canvas, geometry="torchvision"))
  np.testing.assert_array_equal(ours, expected)


def test_inside_image_flags_allowed_border():
  a = np.array([[0, 0, 10, 10], [-1, 0, 10, 10], [0, 0, 49, 29], [0, 0, 50, 29],
                [-3, -3, 52, 20]], np.float32)
  image_shape = np.array([30, 50])
  np.testing.assert_array_equal(anchors.inside_image(a, image_shape, 0),
                                [True, False, True, False, False])
  np.testing.assert_array_equal(anchors.inside_image(a, image_shape, 3),
                                [True, True, True, True, True])
  assert np.asarray(anchors.inside_image(a, image_shape, -1)).all()
