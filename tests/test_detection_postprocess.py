"""RPN proposals and per-class NMS against NumPy transcriptions of mmdet v1.0's
get_bboxes_single / multiclass_nms, and torchvision's filter_proposals /
postprocess_detections where installed."""

import jax
import numpy as np

from lct_flax.detection import anchors as anchors_lib
from lct_flax.detection import postprocess
from lct_flax.detection.convention import Convention
from detection_reference import (clustered_boxes, jitted, numpy_decode, numpy_greedy_nms,
                                 torchvision_modules)

MMDET = Convention.mmdet_v1()
TORCHVISION = Convention.torchvision()


def numpy_mmdet_rpn(logits, deltas, anchors, image_shape, nms_pre, nms_post, max_num):
  """mmdet v1 RPNHead.get_bboxes_single (sigmoid, min_bbox_size 0, nms_across_levels False)."""
  boxes, scores = [], []
  for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
    top = np.argsort(-level_logits, kind="stable")[:nms_pre]
    decoded = numpy_decode(level_anchors[top], level_deltas[top], 1.0, (0,) * 4, (1,) * 4, True)
    decoded[:, 0::2] = np.clip(decoded[:, 0::2], 0, image_shape[1] - 1)
    decoded[:, 1::2] = np.clip(decoded[:, 1::2], 0, image_shape[0] - 1)
    level_scores = 1 / (1 + np.exp(-level_logits[top].astype(np.float64)))
    keep = numpy_greedy_nms(decoded, level_scores, np.ones(len(top), bool), 0.7, 1.0)[:nms_post]
    boxes.append(decoded[keep])
    scores.append(level_scores[keep])
  boxes, scores = np.concatenate(boxes), np.concatenate(scores)
  best = np.argsort(-scores, kind="stable")[:max_num]
  return boxes[best], scores[best]


def rpn_inputs(rng, canvas, geometry):
  level_anchors = anchors_lib.level_anchors(canvas, strides=(8, 16, 32), geometry=geometry)
  logits = [rng.normal(0, 2, len(a)).astype(np.float32) for a in level_anchors]
  deltas = [rng.normal(0, 0.3, (len(a), 4)).astype(np.float32) for a in level_anchors]
  return logits, deltas, level_anchors


def test_rpn_proposals_match_mmdet_v1_transcription():
  rng = np.random.default_rng(0)
  logits, deltas, level_anchors = rpn_inputs(rng, (64, 96), "mmdet_v1")
  image_shape = np.array([60, 90])
  run = jax.jit(lambda l, d, s: postprocess.rpn_proposals(
      l, d, level_anchors, s, coder=MMDET.box_coder(), nms_pre=50, nms_post=30, max_num=60))
  boxes, scores, valid = run(logits, deltas, image_shape)
  expected_boxes, expected_scores = numpy_mmdet_rpn(logits, deltas, level_anchors, image_shape,
                                                    50, 30, 60)
  count = len(expected_scores)
  assert np.asarray(valid).sum() == count and np.asarray(valid)[:count].all()
  np.testing.assert_allclose(np.asarray(boxes)[:count], expected_boxes, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(np.asarray(scores)[:count], expected_scores, rtol=1e-5)


def numpy_mmdet_multiclass_nms(boxes, scores, score_thr, iou_thr, max_num):
  """mmdet v1 multiclass_nms with shared boxes (+1 IoU), then sorted by score."""
  out = []
  for c in range(scores.shape[1]):
    inds = np.flatnonzero(scores[:, c] > score_thr)
    keep = numpy_greedy_nms(boxes[inds], scores[inds, c], np.ones(len(inds), bool), iou_thr, 1.0)
    out += [(scores[inds[k], c], c, inds[k]) for k in keep]
  out.sort(key=lambda t: -t[0])
  return out[:max_num]


def test_multiclass_nms_matches_mmdet_v1_transcription():
  rng = np.random.default_rng(1)
  boxes = clustered_boxes(rng, 80)
  scores = rng.dirichlet(np.full(5, 0.3), 80).astype(np.float32)[:, 1:]
  valid = np.ones(80, bool)
  valid[-5:] = False
  detections = jitted(postprocess.multiclass_nms, score_threshold=0.05, iou_threshold=0.5,
                      max_output=40, max_candidates=320, offset=1.0)(boxes[:, None], scores,
                                                                    valid)
  expected = numpy_mmdet_multiclass_nms(boxes[:75], scores[:75], 0.05, 0.5, 40)
  assert len(expected) == 40 and int(detections.num_candidates) > 40
  assert np.asarray(detections.valid).all()
  np.testing.assert_allclose(detections.scores, [e[0] for e in expected], rtol=1e-6)
  np.testing.assert_array_equal(detections.labels, [e[1] for e in expected])
  np.testing.assert_allclose(detections.boxes, boxes[[e[2] for e in expected]])


def test_against_torchvision_filter_proposals_and_postprocess_detections():
  torch, torchvision = torchvision_modules()
  from torchvision.models.detection import _utils as det_utils
  from torchvision.models.detection.roi_heads import RoIHeads
  from torchvision.models.detection.rpn import RegionProposalNetwork
  rng = np.random.default_rng(2)
  canvas = (64, 96)
  logits, deltas, level_anchors = rpn_inputs(rng, canvas, "torchvision")
  image_shape = (58, 90)
  rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, dict(training=50, testing=50),
                              dict(training=70, testing=70), 0.7).eval()
  all_anchors = torch.from_numpy(np.concatenate(level_anchors))
  decoded = det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(
      torch.from_numpy(np.concatenate(deltas)), all_anchors)
  expected_boxes, expected_scores = rpn.filter_proposals(
      decoded[None], torch.from_numpy(np.concatenate(logits))[None], [image_shape],
      [len(a) for a in level_anchors])
  boxes, scores, valid = jitted(
      postprocess.rpn_proposals, anchors=level_anchors, coder=TORCHVISION.box_coder(),
      nms_pre=50, nms_post=50, max_num=70, min_size=TORCHVISION.min_proposal_size)(
          logits, deltas, image_shape=np.array(image_shape))
  count = len(expected_scores[0])
  assert np.asarray(valid).sum() == count
  np.testing.assert_allclose(np.asarray(boxes)[:count], expected_boxes[0].numpy(), rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(scores)[:count], expected_scores[0].numpy(), rtol=1e-6)

  heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 30)
  proposals = clustered_boxes(rng, 60)
  class_logits = rng.normal(0, 2, (60, 5)).astype(np.float32)
  regression = rng.normal(0, 0.5, (60, 20)).astype(np.float32)
  expected = heads.postprocess_detections(torch.from_numpy(class_logits),
                                          torch.from_numpy(regression),
                                          [torch.from_numpy(proposals)], [(70, 80)])
  coder = TORCHVISION.box_coder(stds=(0.1, 0.1, 0.2, 0.2))

  @jax.jit
  def detect(proposals, class_logits, regression):
    per_class = coder.decode(proposals[:, None], regression.reshape(60, 5, 4))
    per_class = postprocess.boxes_lib.clip_boxes(per_class, np.array([70, 80]))
    probabilities = jax.nn.softmax(class_logits, axis=-1)
    return postprocess.multiclass_nms(
        per_class[:, 1:], probabilities[:, 1:], np.ones(60, bool), score_threshold=0.05,
        iou_threshold=0.5, max_output=30, max_candidates=240,
        min_size=TORCHVISION.min_detection_size)

  ours = detect(proposals, class_logits, regression)
  count = len(expected[1][0])
  assert count == 30 and np.asarray(ours.valid).all()
  np.testing.assert_allclose(ours.boxes, expected[0][0].numpy(), rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(ours.scores, expected[1][0].numpy(), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(ours.labels) + 1, expected[2][0].numpy())
