"""Detection losses and their normalisation against NumPy transcriptions of mmdet v1.0's loss
functions, and torchvision's fastrcnn_loss / maskrcnn_loss arithmetic where installed."""

import jax.numpy as jnp
import numpy as np
import pytest

from lct_flax.detection import losses
from lct_flax.detection import targets
from detection_reference import torchvision_modules


def numpy_smooth_l1(d, beta):
  d = np.abs(d.astype(np.float64))
  return np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def numpy_bce(x, z):
  x = x.astype(np.float64)
  return -(z * np.log(1 / (1 + np.exp(-x))) + (1 - z) * np.log(1 - 1 / (1 + np.exp(-x))))


def numpy_ce(logits, labels):
  logits = logits.astype(np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  return log_z - np.take_along_axis(logits, labels[..., None], -1)[..., 0]


def test_elementwise_losses_match_numpy():
  rng = np.random.default_rng(0)
  d = np.array([-2.0, -1 / 9, -0.05, 0.0, 0.05, 1 / 9 - 1e-4, 0.3, 3.0], np.float32)
  for beta in (1.0, 1 / 9):
    np.testing.assert_allclose(losses.smooth_l1(d, 0.0, beta), numpy_smooth_l1(d, beta),
                               rtol=1e-6, atol=1e-7)
  x = rng.normal(0, 4, 50).astype(np.float32)
  z = (rng.uniform(size=50) > 0.5).astype(np.float32)
  np.testing.assert_allclose(losses.sigmoid_cross_entropy(x, z), numpy_bce(x, z), rtol=1e-5)
  logits = rng.normal(0, 3, (20, 6)).astype(np.float32)
  labels = rng.integers(0, 6, 20)
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels),
                             numpy_ce(logits, labels), rtol=1e-5)


def rpn_batch(rng, num_pos, num_neg, anchors=40):
  """Dense RPN targets of len(num_pos) images with the given sample counts."""
  fields = {k: [] for k in targets.RPNTargets._fields}
  for p, n in zip(num_pos, num_neg):
    order = rng.permutation(anchors)
    labels = np.zeros(anchors, np.int32)
    labels[order[:p]] = 1
    weights = np.zeros(anchors, np.float32)
    weights[order[:p + n]] = 1
    fields["labels"].append(labels)
    fields["label_weights"].append(weights)
    fields["box_targets"].append(rng.normal(0, 0.5, (anchors, 4)).astype(np.float32)
                                 * labels[:, None])
    fields["box_weights"].append(np.repeat(labels[:, None], 4, 1).astype(np.float32))
    fields["num_pos"].append(p)
    fields["num_neg"].append(n)
  return targets.RPNTargets(**{k: np.stack(v) for k, v in fields.items()})


def test_rpn_loss_normalisation_in_both_conventions():
  rng = np.random.default_rng(1)
  batch = rpn_batch(rng, num_pos=[5, 0], num_neg=[11, 16])
  logits = rng.normal(size=(2, 40)).astype(np.float32)
  deltas = rng.normal(size=(2, 40, 4)).astype(np.float32)
  cls_sum = (numpy_bce(logits, batch.labels) * batch.label_weights).sum()
  box_sum = (numpy_smooth_l1(deltas - batch.box_targets, 1 / 9) * batch.box_weights).sum()
  mmdet_factor = (5 + 11) + (1 + 16)             # sum of max(pos, 1) + max(neg, 1)
  torch_factor = 5 + 11 + 0 + 16
  for normalisation, factor in (("mmdet_v1", mmdet_factor), ("torchvision", torch_factor)):
    loss_cls, loss_box = losses.rpn_loss(logits, deltas, batch, normalisation=normalisation)
    np.testing.assert_allclose(loss_cls, cls_sum / factor, rtol=1e-5)
    np.testing.assert_allclose(loss_box, box_sum / factor, rtol=1e-5)


def rcnn_batch(rng, images=2, rois=6, classes=4):
  labels = rng.integers(0, classes + 1, (images, rois)).astype(np.int32)
  valid = np.ones((images, rois), bool)
  valid[1, -2:] = False
  labels[~valid] = 0
  positive = (labels > 0) & valid
  return targets.RCNNTargets(
      rois=np.zeros((images, rois, 4), np.float32), valid=valid, labels=labels,
      label_weights=valid.astype(np.float32),
      box_targets=(rng.normal(size=(images, rois, 4)) * positive[..., None]).astype(np.float32),
      box_weights=np.repeat(positive[..., None], 4, -1).astype(np.float32),
      matched_gt=np.zeros((images, rois), np.int32), is_gt=np.zeros((images, rois), bool),
      num_pos=positive.sum(1), num_neg=(valid & ~positive).sum(1))


@pytest.mark.parametrize("agnostic", [False, True])
def test_rcnn_loss_matches_mmdet_v1_transcription(agnostic):
  rng = np.random.default_rng(2)
  batch = rcnn_batch(rng)
  logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
  deltas = rng.normal(size=(2, 6, 1 if agnostic else 5, 4)).astype(np.float32)
  loss_cls, loss_box = losses.rcnn_loss(logits, deltas, batch, beta=1.0)
  valid = batch.valid
  expected_cls = numpy_ce(logits, batch.labels)[valid].sum() / valid.sum()
  box_sum = 0.0
  for i, r in zip(*np.nonzero(batch.labels > 0)):
    pred = deltas[i, r, 0 if agnostic else batch.labels[i, r]]
    box_sum += numpy_smooth_l1(pred - batch.box_targets[i, r], 1.0).sum()
  np.testing.assert_allclose(loss_cls, expected_cls, rtol=1e-5)
  np.testing.assert_allclose(loss_box, box_sum / valid.sum(), rtol=1e-5)


def test_mask_loss_averages_over_positive_pixels():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(5, 4, 4, 3)).astype(np.float32)
  masks = (rng.uniform(size=(5, 4, 4)) > 0.5).astype(np.float32)
  labels = np.array([1, 2, 0, 1, 0])
  weights = np.array([1, 1, 0, 1, 0], np.float32)
  expected = np.mean([numpy_bce(logits[i, :, :, labels[i]], masks[i]) for i in (0, 1, 3)])
  np.testing.assert_allclose(losses.mask_loss(logits, masks, labels, weights), expected,
                             rtol=1e-5)


def test_against_torchvision_fastrcnn_and_maskrcnn_losses():
  torch, _ = torchvision_modules()
  from torchvision.models.detection import roi_heads
  rng = np.random.default_rng(4)
  batch = rcnn_batch(rng)
  batch = batch._replace(valid=np.ones_like(batch.valid),
                         label_weights=np.ones_like(batch.label_weights))
  logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
  deltas = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
  loss_cls, loss_box = losses.rcnn_loss(logits, deltas, batch, beta=1 / 9)
  expected_cls, expected_box = roi_heads.fastrcnn_loss(
      torch.from_numpy(logits.reshape(12, 5)), torch.from_numpy(deltas.reshape(12, 20)),
      [torch.from_numpy(batch.labels[i]).long() for i in range(2)],
      [torch.from_numpy(batch.box_targets[i]) for i in range(2)])
  np.testing.assert_allclose(loss_cls, expected_cls.item(), rtol=1e-5)
  np.testing.assert_allclose(loss_box, expected_box.item(), rtol=1e-5)

  mask_logits = rng.normal(size=(4, 3, 3, 5)).astype(np.float32)
  mask_targets = rng.uniform(size=(4, 3, 3)).astype(np.float32)
  labels = np.array([1, 4, 2, 2])
  expected = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.from_numpy(mask_logits.transpose(0, 3, 1, 2))[torch.arange(4), labels],
      torch.from_numpy(mask_targets))
  np.testing.assert_allclose(losses.mask_loss(mask_logits, mask_targets, labels, jnp.ones(4)),
                             expected.item(), rtol=1e-5)


def test_rcnn_loss_with_the_background_last_stays_finite():
  """background_index K with K sets of deltas: negatives index past the last set at weight 0."""
  rng = np.random.default_rng(5)
  batch = rcnn_batch(rng, classes=4)
  labels = np.where(batch.labels == 0, 4, batch.labels - 1)        # foreground 0..3, background 4
  batch = batch._replace(labels=labels)
  logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
  deltas = rng.normal(size=(2, 6, 4, 4)).astype(np.float32)
  _, loss_box = losses.rcnn_loss(logits, deltas, batch)
  box_sum = sum(numpy_smooth_l1(deltas[i, r, labels[i, r]] - batch.box_targets[i, r], 1.0).sum()
                for i, r in zip(*np.nonzero(labels < 4)))
  np.testing.assert_allclose(loss_box, box_sum / batch.valid.sum(), rtol=1e-5)
