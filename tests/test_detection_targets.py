"""Assigner, sampler and RPN / R-CNN targets on hand-made boxes, against NumPy transcriptions of
mmdet v1.0's MaxIoUAssigner and torchvision's Matcher, and torchvision's Matcher itself."""

import jax
import numpy as np
import pytest

from lct_flax.detection import targets
from lct_flax.detection.convention import Convention
from detection_reference import jitted, numpy_iou, random_boxes, torchvision_modules

MMDET = Convention.mmdet_v1()
TORCHVISION = Convention.torchvision()

# Ground truth: G0, G1 and a padding slot (invalid) that coincides with anchor a2.
GT = np.array([[0, 0, 9, 9], [20, 20, 39, 39], [60, 60, 69, 69]], np.float32)
GT_VALID = np.array([True, True, False])
# a0 = G0 (IoU 1); a1 IoU 0.5 with G0 (between the thresholds); a2 far from every valid gt;
# a3, a4: G1's best anchors with IoU 0.5 (low-quality matches, a tie); a5 IoU 0.25 with G0;
# a6 = G1 exactly but invalid (it must neither match nor take G1's low-quality matches).
ANCHORS = np.array([[0, 0, 9, 9], [0, 0, 9, 19], [60, 60, 69, 69], [20, 20, 39, 59],
                    [20, 20, 39, 59], [6, 0, 15, 9], [20, 20, 39, 39]], np.float32)
ANCHOR_VALID = np.array([True, True, True, True, True, True, False])


def numpy_mmdet_assign(overlaps, pos_thr, neg_thr, min_pos_iou, gt_max_assign_all=True):
  """mmdet v1 MaxIoUAssigner.assign_wrt_overlaps on a (gts, boxes) matrix: -1 ignore, 0
  negative, i + 1 gt i."""
  num_gts, num_boxes = overlaps.shape
  assigned = np.full(num_boxes, -1)
  if num_gts == 0:
    return np.zeros(num_boxes, int)
  max_overlaps, argmax = overlaps.max(0), overlaps.argmax(0)
  assigned[(max_overlaps >= 0) & (max_overlaps < neg_thr)] = 0
  assigned[max_overlaps >= pos_thr] = argmax[max_overlaps >= pos_thr] + 1
  for i in range(num_gts):
    if overlaps[i].max() >= min_pos_iou:
      if gt_max_assign_all:
        assigned[overlaps[i] == overlaps[i].max()] = i + 1
      else:
        assigned[overlaps[i].argmax()] = i + 1
  return assigned


def numpy_torchvision_match(quality, high, low, allow_low_quality):
  """torchvision Matcher: gt index, -1 below low, -2 between."""
  matched_vals, matches = quality.max(0), quality.argmax(0)
  all_matches = matches.copy()
  matches[matched_vals < low] = -1
  matches[(matched_vals >= low) & (matched_vals < high)] = -2
  if allow_low_quality:
    for i in range(quality.shape[0]):
      best = quality[i] == quality[i].max()
      matches[best] = all_matches[best]
  return matches


def as_codes(assignment):
  """Assignment -> mmdet codes (-1 ignore, 0 negative, gt + 1)."""
  codes = np.where(assignment.positive, np.asarray(assignment.gt_index) + 1, -1)
  return np.where(assignment.negative, 0, codes)


@pytest.mark.parametrize("convention", [MMDET, TORCHVISION])
def test_rpn_assigner_on_hand_made_boxes(convention):
  result = jax.jit(convention.rpn_assigner().assign)(ANCHORS, ANCHOR_VALID, GT, GT_VALID)
  np.testing.assert_array_equal(as_codes(result), [1, -1, 0, 2, 2, 0, -1])
  if convention is MMDET:                        # the hand-computed +1 IoUs
    np.testing.assert_allclose(np.asarray(result.max_iou)[:6], [1, 0.5, 0, 0.5, 0.5, 0.25],
                               atol=1e-6)


def test_mmdet_first_best_only_without_gt_max_assign_all():
  assigner = targets.MaxIoUAssigner(0.7, 0.3, 0.3, gt_max_assign_all=False, box_offset=1.0)
  result = jax.jit(assigner.assign)(ANCHORS, ANCHOR_VALID, GT, GT_VALID)
  np.testing.assert_array_equal(as_codes(result), [1, -1, 0, 2, -1, 0, -1])


def test_low_quality_match_goes_to_the_gt_in_mmdet_and_to_the_argmax_in_torchvision():
  """Box b is G_A's best (IoU 0.7) but overlaps G_B more (0.714), whose best is box c (1.0)."""
  gt = np.array([[0, 0, 100, 100], [0, 0, 100, 50]], np.float32)
  boxes_ = np.array([[0, 0, 100, 70], [0, 0, 100, 50]], np.float32)
  kwargs = dict(box_offset=0.0)
  mmdet = jax.jit(targets.MaxIoUAssigner(0.99, 0.3, 0.3, "mmdet_v1", **kwargs).assign)(
      boxes_, np.ones(2, bool), gt, np.ones(2, bool))
  torch_like = jax.jit(targets.MaxIoUAssigner(0.99, 0.3, 0.0, "torchvision", **kwargs).assign)(
      boxes_, np.ones(2, bool), gt, np.ones(2, bool))
  assert np.asarray(mmdet.positive).all() and np.asarray(torch_like.positive).all()
  # b: mmdet gives it to the gt whose best it is, torchvision to its own argmax
  np.testing.assert_array_equal(mmdet.gt_index, [0, 1])
  np.testing.assert_array_equal(torch_like.gt_index, [1, 1])


def test_crowd_regions_are_ignored_and_no_gt_means_all_negative():
  crowd = np.array([[58, 58, 80, 80], [0, 0, 1, 1]], np.float32)
  assigner = MMDET.rpn_assigner(ignore_iof_thr=0.5)
  assign = jax.jit(assigner.assign)
  result = assign(ANCHORS, ANCHOR_VALID, GT, GT_VALID, crowd, np.array([True, False]))
  np.testing.assert_array_equal(as_codes(result), [1, -1, -1, 2, 2, 0, -1])
  empty = assign(ANCHORS, ANCHOR_VALID, GT, np.zeros(3, bool), crowd, np.zeros(2, bool))
  np.testing.assert_array_equal(as_codes(empty), [0, 0, 0, 0, 0, 0, -1])


@pytest.mark.parametrize("stage", ["rpn", "rcnn"])
def test_assigners_match_numpy_transcriptions_on_random_boxes(stage):
  rng = np.random.default_rng(0)
  gt = random_boxes(rng, 6, max_side=50)
  candidates = np.concatenate([random_boxes(rng, 300, max_side=50), gt[:2] + 0.5])
  valid = np.ones(len(candidates), bool)
  for convention in (MMDET, TORCHVISION):
    offset = convention.box_offset
    quality = numpy_iou(gt, candidates, offset)
    if stage == "rpn":
      assigner = convention.rpn_assigner()
    else:
      assigner = convention.rcnn_assigner(0.5)
    codes = as_codes(jax.jit(assigner.assign)(candidates, valid, gt, np.ones(6, bool)))
    if convention is MMDET:
      expected = numpy_mmdet_assign(quality, assigner.pos_iou_thr, assigner.neg_iou_thr,
                                    assigner.min_pos_iou)
    else:
      matches = numpy_torchvision_match(quality, assigner.pos_iou_thr, assigner.neg_iou_thr,
                                        stage == "rpn")
      expected = np.where(matches >= 0, matches + 1, np.where(matches == -1, 0, -1))
    np.testing.assert_array_equal(codes, expected)
    assert (codes > 0).sum() >= 2 and (codes == 0).sum() > 100


@pytest.mark.parametrize("num_pos,num_neg,ub,expected", [
    (10, 1000, -1, (10, 246)), (200, 1000, -1, (128, 128)), (0, 1000, -1, (0, 256)),
    (10, 50, -1, (10, 50)), (10, 1000, 3, (10, 30)), (0, 1000, 3, (0, 3))])
def test_sampler_counts(num_pos, num_neg, ub, expected):
  n = 1200
  positive = np.zeros(n, bool)
  negative = np.zeros(n, bool)
  order = np.random.default_rng(num_pos + num_neg).permutation(n)
  positive[order[:num_pos]] = True
  negative[order[num_pos:num_pos + num_neg]] = True
  sampler = targets.RandomSampler(256, 0.5, neg_pos_ub=ub)
  sample = jax.jit(sampler.sample)(jax.random.key(0), positive, negative)
  indices, valid = np.asarray(sample.indices), np.asarray(sample.valid)
  assert (int(sample.num_pos), int(sample.num_neg)) == expected
  assert valid.sum() == sum(expected) and not valid[sum(expected):].any()
  chosen = indices[valid]
  assert len(set(chosen)) == len(chosen)
  assert positive[chosen[:expected[0]]].all() and negative[chosen[expected[0]:]].all()
  np.testing.assert_array_equal(np.asarray(sample.positive), np.arange(256) < expected[0])


def test_sampler_is_reproducible_and_uniform():
  positive = np.arange(100) < 20
  negative = ~positive
  sampler = targets.RandomSampler(10, 0.5)
  sample = jax.jit(sampler.sample)
  first = sample(jax.random.key(7), positive, negative)
  again = sample(jax.random.key(7), positive, negative)
  other = sample(jax.random.key(8), positive, negative)
  np.testing.assert_array_equal(first.indices, again.indices)
  assert set(np.asarray(first.indices)) != set(np.asarray(other.indices))
  keys = jax.random.split(jax.random.key(0), 400)
  picks = jax.jit(jax.vmap(lambda k: sampler.sample(k, positive, negative).indices))(keys)
  counts = np.bincount(np.asarray(picks)[:, :5].ravel(), minlength=20)[:20]
  assert counts.sum() == 2000 and counts.min() > 60 and counts.max() < 140   # mean 100


def test_rpn_targets_on_hand_made_anchors():
  coder = MMDET.box_coder()
  rpn = jitted(targets.rpn_targets, assigner=MMDET.rpn_assigner(),
               sampler=targets.RandomSampler(4, 0.5), coder=coder)(
                   jax.random.key(0), ANCHORS, ANCHOR_VALID, GT, GT_VALID)
  assert int(rpn.num_pos) == 2 and int(rpn.num_neg) == 2
  labels, weights = np.asarray(rpn.labels), np.asarray(rpn.label_weights)
  assert labels.sum() == 2 and weights.sum() == 4
  assert set(np.flatnonzero(labels)) <= {0, 3, 4}
  assert set(np.flatnonzero((weights > 0) & (labels == 0))) == {2, 5}
  assert weights[[1, 6]].sum() == 0
  for a in np.flatnonzero(labels):
    gt = GT[0] if a == 0 else GT[1]
    np.testing.assert_allclose(rpn.box_targets[a], coder.encode(ANCHORS[a], gt), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(rpn.box_weights)[:, 0], labels)
  assert np.all(np.asarray(rpn.box_targets)[labels == 0] == 0)


@pytest.mark.parametrize("convention", [MMDET, TORCHVISION])
def test_rcnn_targets_add_gt_labels_and_targets(convention):
  proposals = np.array([[0, 0, 9, 9.5], [20, 22, 39, 39], [50, 50, 60, 60], [0, 0, 30, 30],
                        [0, 0, 0, 0]], np.float32)
  proposal_valid = np.array([True, True, True, True, False])
  gt_labels = np.array([3, 7, 0])
  coder = convention.box_coder(stds=(0.1, 0.1, 0.2, 0.2))
  out = jitted(targets.rcnn_targets, assigner=convention.rcnn_assigner(0.5),
               sampler=targets.RandomSampler(8, 0.5), coder=coder,
               gt_proposals=convention.gt_proposals)(
                   jax.random.key(1), proposals, proposal_valid, GT, gt_labels, GT_VALID)
  # candidates: 2 valid gts + proposals 0, 1 (positive) and 2, 3 (negative); cap 4 positives
  assert int(out.num_pos) == 4 and int(out.num_neg) == 2
  valid = np.asarray(out.valid)
  np.testing.assert_array_equal(valid, np.arange(8) < 6)
  rois, labels = np.asarray(out.rois), np.asarray(out.labels)
  matched = np.asarray(out.matched_gt)
  np.testing.assert_array_equal(np.sort(labels[:4]), [4, 4, 8, 8])       # gt label + 1
  np.testing.assert_array_equal(labels[4:6], [0, 0])
  for i in range(4):
    np.testing.assert_allclose(out.box_targets[i], coder.encode(rois[i], GT[matched[i]]),
                               atol=1e-5)
  assert np.asarray(out.is_gt).sum() == 2
  assert {tuple(r) for r in rois[np.asarray(out.is_gt)]} == {tuple(GT[0]), tuple(GT[1])}
  np.testing.assert_array_equal(np.asarray(out.box_weights)[:, 0], np.arange(8) < 4)
  assert np.all(np.asarray(out.box_targets)[4:] == 0)
  np.testing.assert_array_equal(np.asarray(out.label_weights), valid)


def test_rcnn_targets_background_last_and_order():
  proposals = np.array([[50, 50, 60, 60]], np.float32)
  kwargs = dict(assigner=MMDET.rcnn_assigner(), sampler=targets.RandomSampler(4, 0.5),
                coder=MMDET.box_coder())
  last = jitted(targets.rcnn_targets, background_index=80, **kwargs)(
      jax.random.key(0), proposals, np.array([True]), GT, np.array([3, 7, 0]), GT_VALID)
  np.testing.assert_array_equal(np.sort(np.asarray(last.labels)[:2]), [3, 7])
  assert int(np.asarray(last.labels)[2]) == 80


def test_targets_vmap_over_images():
  sampler = targets.RandomSampler(4, 0.5)
  batched = jax.jit(jax.vmap(lambda k, g, v: targets.rpn_targets(
      k, ANCHORS, ANCHOR_VALID, g, v, assigner=MMDET.rpn_assigner(), sampler=sampler,
      coder=MMDET.box_coder())))
  out = batched(jax.random.split(jax.random.key(0), 2), np.stack([GT, GT]),
                np.stack([GT_VALID, np.zeros(3, bool)]))
  np.testing.assert_array_equal(out.num_pos, [2, 0])
  np.testing.assert_array_equal(out.num_neg, [2, 4])


def test_against_torchvision_matcher():
  torch, torchvision = torchvision_modules()
  from torchvision.models.detection import _utils as det_utils
  rng = np.random.default_rng(5)
  gt = random_boxes(rng, 5, max_side=50)
  candidates = random_boxes(rng, 400, max_side=50)
  quality = torchvision.ops.box_iou(torch.from_numpy(gt), torch.from_numpy(candidates))
  for allow, assigner in ((True, TORCHVISION.rpn_assigner()),
                          (False, TORCHVISION.rcnn_assigner(0.5))):
    matcher = det_utils.Matcher(assigner.pos_iou_thr, assigner.neg_iou_thr, allow)
    matches = matcher(quality.clone()).numpy()
    expected = np.where(matches >= 0, matches + 1, np.where(matches == -1, 0, -1))
    codes = as_codes(jax.jit(assigner.assign)(candidates, np.ones(400, bool), gt,
                                              np.ones(5, bool)))
    np.testing.assert_array_equal(codes, expected)
    assert (codes > 0).sum() >= 5
