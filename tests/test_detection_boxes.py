"""Box ops against NumPy transcriptions of mmdetection v1.0 and torchvision (and torchvision
itself where it is installed): IoU / IoF, the delta coder, greedy and per-class NMS."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lct_flax.detection import boxes
from lct_flax.detection.convention import Convention
from detection_reference import (clustered_boxes, numpy_decode, numpy_greedy_nms, numpy_iou,
                                 random_boxes, torchvision_modules)


def numpy_encode(p, g, offset, means, stds):
  """mmdet v1 bbox2delta with the +1 of `offset`."""
  pw, ph = p[:, 2] - p[:, 0] + offset, p[:, 3] - p[:, 1] + offset
  gw, gh = g[:, 2] - g[:, 0] + offset, g[:, 3] - g[:, 1] + offset
  d = np.stack([((g[:, 0] + g[:, 2]) - (p[:, 0] + p[:, 2])) / 2 / pw,
                ((g[:, 1] + g[:, 3]) - (p[:, 1] + p[:, 3])) / 2 / ph,
                np.log(gw / pw), np.log(gh / ph)], 1)
  return (d - np.asarray(means)) / np.asarray(stds)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_iou_and_iof_match_numpy(offset):
  rng = np.random.default_rng(int(offset))
  a, b = random_boxes(rng, 7), random_boxes(rng, 9)
  np.testing.assert_allclose(boxes.pairwise_iou(a, b, offset), numpy_iou(a, b, offset),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(boxes.pairwise_iof(a, b, offset),
                             numpy_iou(a, b, offset, "iof"), rtol=1e-5, atol=1e-7)


def test_mmdet_v1_iou_docstring_values():
  """The values in mmdet v1.0's bbox_overlaps docstring (the +1 convention)."""
  a = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [32, 32, 38, 42]], np.float32)
  b = np.array([[0, 0, 10, 20], [0, 10, 10, 19], [10, 10, 20, 20]], np.float32)
  expected = [[0.5238, 0.0500, 0.0041], [0.0323, 0.0452, 1.0], [0.0, 0.0, 0.0]]
  np.testing.assert_allclose(boxes.pairwise_iou(a, b, 1.0), expected, atol=1e-4)


@pytest.mark.parametrize("convention", [Convention.mmdet_v1(), Convention.torchvision()])
def test_encode_decode_round_trip_and_numpy(convention):
  rng = np.random.default_rng(1)
  p, g = random_boxes(rng, 20), random_boxes(rng, 20)
  stds, means = (0.1, 0.1, 0.2, 0.2), (0.01, -0.02, 0.0, 0.03)
  coder = convention.box_coder(stds=stds, means=means)
  offset = convention.box_offset
  deltas = coder.encode(p, g)
  np.testing.assert_allclose(deltas, numpy_encode(p, g, offset, means, stds), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(coder.decode(p, deltas), g, atol=2e-3)
  wild = rng.normal(0, 3, (20, 4)).astype(np.float32) * np.array([1, 1, 20, 20], np.float32)
  np.testing.assert_allclose(
      coder.decode(p, wild),
      numpy_decode(p, wild, offset, means, stds, convention.clamp_deltas_below),
      rtol=1e-5, atol=1e-2)


def test_decode_clamps_log_ratio_like_each_reference():
  p = np.array([[0, 0, 9, 9]], np.float32)
  shrink = np.array([[0, 0, -10, -10]], np.float32)
  mmdet = Convention.mmdet_v1().box_coder().decode(p, shrink)[0]
  torch_like = Convention.torchvision().box_coder().decode(p, shrink)[0]
  # mmdet: width 10 * 16/1000 = 0.16 about centre 4.5, with the +1 inset
  np.testing.assert_allclose(mmdet, [4.5 - 0.08 + 0.5, 4.5 - 0.08 + 0.5, 4.5 + 0.08 - 0.5,
                                     4.5 + 0.08 - 0.5], atol=1e-5)
  np.testing.assert_allclose(torch_like[2] - torch_like[0], 9 * math.exp(-10), atol=2e-6)


def test_clip_boxes_to_w_minus_offset():
  b = np.array([[-5, -3, 120, 90]], np.float32)
  np.testing.assert_array_equal(boxes.clip_boxes(b, jnp.array([80, 100]), 1.0),
                                [[0, 0, 99, 79]])
  np.testing.assert_array_equal(boxes.clip_boxes(b, jnp.array([80, 100]), 0.0),
                                [[0, 0, 100, 80]])


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_nms_keeps_the_greedy_numpy_indices_in_order(offset):
  rng = np.random.default_rng(3)
  b = clustered_boxes(rng, 60)
  scores = rng.uniform(size=60).astype(np.float32)
  scores[10] = scores[11]                                    # a tie: lower index first
  valid = rng.uniform(size=60) > 0.15
  expected = numpy_greedy_nms(b, scores, valid, 0.5, offset)
  indices, kept = jax.jit(boxes.nms, static_argnums=(3, 4), static_argnames="offset")(
      b, scores, valid, 0.5, 60, offset=offset)
  assert 0 < len(expected) < valid.sum()
  np.testing.assert_array_equal(np.asarray(indices)[np.asarray(kept)], expected)
  assert not np.asarray(kept)[len(expected):].any()
  truncated, kept3 = boxes.nms(b, scores, valid, 0.5, 3, offset=offset)
  np.testing.assert_array_equal(np.asarray(truncated), expected[:3])
  assert np.asarray(kept3).all()


def test_batched_nms_suppresses_only_within_groups():
  rng = np.random.default_rng(4)
  b = clustered_boxes(rng, 40)
  scores = rng.uniform(size=40).astype(np.float32)
  groups = rng.integers(0, 3, 40)
  valid = np.ones(40, bool)
  expected = numpy_greedy_nms(b, scores, valid, 0.4, 0.0, groups)
  indices, kept = boxes.batched_nms(b, scores, groups, valid, 0.4, 40)
  np.testing.assert_array_equal(np.asarray(indices)[np.asarray(kept)], expected)
  assert len(expected) > len(numpy_greedy_nms(b, scores, valid, 0.4, 0.0))


def test_nms_compiles_once_per_static_shape():
  traces = []

  @jax.jit
  def run(b, s, v):
    traces.append(1)
    return boxes.nms(b, s, v, 0.7, 16)

  rng = np.random.default_rng(5)
  for _ in range(3):
    run(clustered_boxes(rng, 32), rng.uniform(size=32).astype(np.float32), np.ones(32, bool))
  assert len(traces) == 1
  assert run._cache_size() == 1


def test_nms_under_vmap_matches_per_image():
  rng = np.random.default_rng(6)
  b = np.stack([clustered_boxes(rng, 30) for _ in range(3)])
  s = rng.uniform(size=(3, 30)).astype(np.float32)
  v = rng.uniform(size=(3, 30)) > 0.2
  indices, kept = jax.vmap(lambda *a: boxes.nms(*a, 0.5, 30))(b, s, v)
  for i in range(3):
    expected = numpy_greedy_nms(b[i], s[i], v[i], 0.5, 0.0)
    np.testing.assert_array_equal(np.asarray(indices[i])[np.asarray(kept[i])], expected)


def test_against_torchvision_box_iou_nms_and_box_coder():
  torch, torchvision = torchvision_modules()
  tv_ops = torchvision.ops
  det_utils = torchvision.models.detection._utils
  rng = np.random.default_rng(7)
  a, b = random_boxes(rng, 30), random_boxes(rng, 25)
  np.testing.assert_allclose(boxes.pairwise_iou(a, b),
                             tv_ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
                             rtol=1e-6, atol=1e-7)
  c = clustered_boxes(rng, 200)
  scores = rng.uniform(size=200).astype(np.float32)
  expected = tv_ops.nms(torch.from_numpy(c), torch.from_numpy(scores), 0.5).numpy()
  indices, kept = boxes.nms(c, scores, np.ones(200, bool), 0.5, 200)
  np.testing.assert_array_equal(np.asarray(indices)[np.asarray(kept)], expected)
  groups = rng.integers(0, 4, 200)
  expected = tv_ops.batched_nms(torch.from_numpy(c), torch.from_numpy(scores),
                                torch.from_numpy(groups), 0.5).numpy()
  indices, kept = boxes.batched_nms(c, scores, groups, np.ones(200, bool), 0.5, 200)
  np.testing.assert_array_equal(np.asarray(indices)[np.asarray(kept)], expected)

  coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
  ours = Convention.torchvision().box_coder(stds=(0.1, 0.1, 0.2, 0.2))
  p, g = random_boxes(rng, 40), random_boxes(rng, 40)
  np.testing.assert_allclose(
      ours.encode(p, g), coder.encode_single(torch.from_numpy(g), torch.from_numpy(p)).numpy(),
      rtol=1e-5, atol=1e-5)
  deltas = rng.normal(0, 2, (40, 4)).astype(np.float32) * np.array([1, 1, 5, 5], np.float32)
  np.testing.assert_allclose(
      ours.decode(p, deltas),
      coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(p)).numpy(),
      rtol=1e-5, atol=1e-3)
