"""The Region Proposal Network (Ren et al., NeurIPS 2015) of an FPN detector, as in mmdetection
v1.0 (mmdet/models/anchor_heads/rpn_head.py, anchor_head.py) and torchvision
(models/detection/rpn.py RegionProposalNetwork).

`RPN`: its convolutions (`rpn_head`), the anchors of every level (`anchors`), the proposals
(`postprocess.rpn_proposals`), the targets (`targets.rpn_targets`: assigner, sampler, box coder
of the convention) and the loss (`losses.rpn_loss`).

`RPNHead`, shared over the FPN levels: conv3x3 (256) + ReLU, then a 1x1 objectness convolution
(A logits, sigmoid) and a 1x1 box convolution (4A deltas); all three initialised N(0, 0.01^2), bias 0 (both references). The
outputs of a level flatten in (H, W, A) order, the order of `anchors.level_anchors`; each
location's 4A box channels are (anchor, coordinate), as both references reshape them.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lct_flax.detection import anchors as anchors_lib
from lct_flax.detection import losses as losses_lib
from lct_flax.detection import postprocess
from lct_flax.detection import targets as targets_lib
from lct_flax.detection.settings import DetectorSettings
from lct_flax.detection.settings import ProposalSettings

normal_001 = nn.initializers.normal(0.01)


class RPNHead(nn.Module):
  """Per level: (N, H, W, C) -> objectness logits (N, H*W*A) and deltas (N, H*W*A, 4), float32."""
  num_anchors: int = 3
  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    conv = functools.partial(nn.Conv, use_bias=True, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=normal_001)
    hidden = conv(self.channels, (3, 3), padding=1, name="conv")
    objectness = conv(self.num_anchors, (1, 1), name="cls")
    boxes = conv(4 * self.num_anchors, (1, 1), name="reg")
    logits, deltas = [], []
    for x in features:
      h = nn.relu(hidden(x))
      n = x.shape[0]
      logits.append(objectness(h).astype(jnp.float32).reshape(n, -1))
      deltas.append(boxes(h).astype(jnp.float32).reshape(n, -1, 4))
    return logits, deltas


class Proposals(NamedTuple):
  """The RPN's outputs on a batch: per level, objectness logits (N, A_l) and deltas (N, A_l, 4)
  with the anchors (A_l, 4, NumPy constants of the canvas); the proposals (N, P, 4) and their
  validity (N, P)."""
  logits: list
  deltas: list
  anchors: list
  boxes: jax.Array
  valid: jax.Array


class RPN(nn.Module):
  """The RPN of `settings` (anchor strides, ratios and scales; train and test proposal counts;
  sample size; convention) around its convolutions `rpn_head` (an `RPNHead`)."""
  rpn_head: nn.Module
  settings: DetectorSettings

  def __call__(self, features: Sequence[jax.Array], image_shape: jax.Array,
               canvas_shape: Sequence[int], *, train: bool) -> Proposals:
    """The proposals of P2..P6 `features` of canvases `canvas_shape` whose images occupy
    `image_shape` (N, 2): `settings.rpn_train`'s counts with `train`, else `rpn_test`'s."""
    logits, deltas = self.rpn_head(features)
    anchors = self.anchors(canvas_shape, features)
    boxes, _, valid = self.propose(logits, deltas, anchors, image_shape,
                                   self.settings.rpn_train if train else self.settings.rpn_test)
    return Proposals(logits, deltas, anchors, boxes, valid)

  def anchors(self, canvas_shape: Sequence[int], features: Sequence[jax.Array]) -> list:
    """Anchors of every level (NumPy constants of the canvas shape)."""
    s = self.settings
    return anchors_lib.level_anchors(
        canvas_shape, s.strides, s.anchor_ratios, s.anchor_scales,
        geometry=s.convention.anchor_geometry, shapes=[f.shape[1:3] for f in features])

  def propose(self, logits, deltas, anchors, image_shape, cfg: ProposalSettings):
    """vmapped `postprocess.rpn_proposals`: boxes (N, P, 4), scores (N, P), valid (N, P)."""
    s = self.settings
    propose = functools.partial(
        postprocess.rpn_proposals, coder=s.convention.box_coder(), nms_pre=cfg.nms_pre,
        nms_post=cfg.nms_post, max_num=cfg.max_num, iou_threshold=cfg.iou_threshold,
        min_size=s.convention.min_proposal_size, group_nms=s.convention.group_nms)
    return jax.vmap(propose, in_axes=(0, 0, None, 0))(logits, deltas,
                                                       [jnp.asarray(a) for a in anchors],
                                                       image_shape)

  def losses(self, proposals: Proposals, image_shape: jax.Array, gt_boxes: jax.Array,
             gt_valid: jax.Array, keys: jax.Array) -> dict:
    """rpn_cls, rpn_box (the losses) and rpn_positives (the mean sampled positives per image)
    of the outputs `proposals` against the gt boxes (N, G, 4) where `gt_valid`; `keys` (N,)
    drive each image's sampler."""
    conv = self.settings.convention
    all_anchors = jnp.asarray(np.concatenate(proposals.anchors))
    anchor_valid = jax.vmap(lambda shape: anchors_lib.inside_image(
        all_anchors, shape, conv.rpn_allowed_border))(image_shape)
    targets = jax.vmap(functools.partial(
        targets_lib.rpn_targets, assigner=conv.rpn_assigner(),
        sampler=conv.rpn_sampler(self.settings.rpn_samples, self.settings.rpn_positive_fraction),
        coder=conv.box_coder()), in_axes=(0, None, 0, 0, 0))(
            keys, all_anchors, anchor_valid, gt_boxes, gt_valid)
    rpn_cls, rpn_box = losses_lib.rpn_loss(
        jnp.concatenate(proposals.logits, axis=1), jnp.concatenate(proposals.deltas, axis=1),
        targets, normalisation=conv.rpn_loss_normalisation)
    return {"rpn_cls": rpn_cls, "rpn_box": rpn_box,
            "rpn_positives": jnp.mean(targets.num_pos.astype(jnp.float32))}
