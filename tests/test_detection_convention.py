"""The two conventions: their values, validation, and the settings they build."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from lct_flax.detection import boxes
from lct_flax.detection.convention import Convention


def test_presets_hold_each_references_values():
  mmdet, torch_like = Convention.mmdet_v1(), Convention.torchvision()
  assert (mmdet.box_offset, torch_like.box_offset) == (1.0, 0.0)
  assert (mmdet.roi_align_mode, torch_like.roi_align_mode) == ("mmdet_v1", "legacy")
  assert (mmdet.rpn_allowed_border, torch_like.rpn_allowed_border) == (0.0, -1.0)
  assert (mmdet.rcnn_smooth_l1_beta, torch_like.rcnn_smooth_l1_beta) == (1.0, 1 / 9)
  assert (mmdet.min_proposal_size, torch_like.min_proposal_size) == (0.0, 1e-3)
  assert (mmdet.group_nms, torch_like.group_nms) == ("exact", "coordinate_trick")
  assert (mmdet.first_label, torch_like.first_label) == (0, 1)
  rpn, rcnn = mmdet.rpn_assigner(), mmdet.rcnn_assigner(0.6)
  assert (rpn.pos_iou_thr, rpn.neg_iou_thr, rpn.min_pos_iou, rpn.box_offset) == (0.7, 0.3, 0.3, 1)
  assert (rcnn.pos_iou_thr, rcnn.neg_iou_thr, rcnn.min_pos_iou) == (0.6, 0.6, 0.6)
  assert torch_like.rpn_assigner().low_quality == "torchvision"
  assert torch_like.rcnn_assigner().low_quality == "none"
  assert (Convention.rpn_sampler().num, Convention.rcnn_sampler().pos_fraction) == (256, 0.25)
  coder = mmdet.box_coder(stds=(0.1, 0.1, 0.2, 0.2))
  assert coder.clamp_below and coder.offset == 1.0
  assert math.isclose(coder.max_log_ratio, math.log(1000 / 16))


def test_unknown_setting_is_one_clear_error():
  with pytest.raises(ValueError, match="roi_align_mode 'bilinear' is unknown"):
    dataclasses.replace(Convention.mmdet_v1(), roi_align_mode="bilinear")
  with pytest.raises(ValueError, match="group_nms 'offset' is unknown"):
    dataclasses.replace(Convention.torchvision(), group_nms="offset")
  with pytest.raises(ValueError, match="box_offset must be 0.0 or 1.0"):
    dataclasses.replace(Convention.torchvision(), box_offset=0.5)


def test_convention_is_a_static_jit_argument():
  calls = []

  def area(b, convention):
    calls.append(convention)
    return boxes.box_area(b, convention.box_offset)

  run = jax.jit(area, static_argnums=1)
  b = np.array([[0, 0, 9, 9]], np.float32)
  assert float(run(b, Convention.mmdet_v1())[0]) == 100.0
  assert float(run(b, Convention.mmdet_v1())[0]) == 100.0
  assert float(run(b, Convention.torchvision())[0]) == 81.0
  assert len(calls) == 2
