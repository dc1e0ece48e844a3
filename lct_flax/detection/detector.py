"""Two-stage FPN detectors: Faster R-CNN (Ren et al. 2015), Cascade R-CNN (Cai and Vasconcelos
2018) and their Mask R-CNN (He et al. 2017) versions on our ResNets with any attention block, the
detectors of the paper's Tables 6 and 7, assembled from parts as mmdetection and torchvision
assemble theirs:

`TwoStageDetector(backbone, neck, rpn_head, box_heads, mask_heads, settings)`, mmdetection's
constructor: a ResNet's C2-C5 (`models.ResNet(features_only=True)`) -> `fpn.FPN` P2-P6 ->
`rpn.RPN` around `rpn_head` (anchors of one scale and 3 aspect ratios per level, proposals,
targets, loss) -> `roi_heads.RoIHeads` around one box head per stage of `settings.stages` (one
stage: Faster R-CNN; three: Cascade R-CNN) and as many mask heads (none: no masks; else their
Mask R-CNNs). The heads are any registered in `head_registry`; `assemble` builds them from their
names and `create_detector` the paper's detectors. The weights keep mmdetection's flat names
(`backbone`, `neck`, `rpn_head`, `box_heads_<stage>`, `mask_heads_<stage>`): the RPN and the RoI
heads hold no weights of their own. Everything runs batched with static shapes under `jax.jit`:

* `model.apply(variables, batch, key, method="losses")`: the training losses (mmdet v1's
  samplers, assigners, targets and normalisation; `lct_flax.detection.targets`, `losses`);
* `model.apply(variables, images, image_shape)`: `postprocess.Detections` per image, boxes in the
  pixels of the resized image on its canvas (and 28x28 mask probabilities with masks; pasting
  them into the image is host work: `segmentation.paste_masks`).

Images arrive as uint8 NHWC canvases; they are normalised with the ImageNet mean/std on the
device and the padding beyond each image's `image_shape` is set to 0 after normalisation, as
both references pad. Settings that differ between mmdetection v1 (the paper's) and torchvision
(the interop anchor) come from `DetectorSettings.convention`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lct_flax import models
from lct_flax.detection import head_registry
from lct_flax.detection import postprocess
from lct_flax.detection.convention import Convention
from lct_flax.detection.fpn import FPN
from lct_flax.detection.roi_heads import RoIHeads
from lct_flax.detection.rpn import RPN
from lct_flax.detection.rpn import RPNHead
from lct_flax.detection.settings import CASCADE_RCNN_STAGES
from lct_flax.detection.settings import FASTER_RCNN_STAGES
from lct_flax.detection.settings import DetectorSettings


def normalize_images(images: jax.Array, image_shape: jax.Array, mean: Sequence[float],
                     std: Sequence[float]) -> jax.Array:
  """uint8 (N, H, W, 3) canvases -> float32 (x - mean) / std, 0 beyond each image's (h, w)."""
  x = (images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std,
                                                                                   jnp.float32)
  rows = jnp.arange(images.shape[1])[None, :, None] < image_shape[:, 0, None, None]
  cols = jnp.arange(images.shape[2])[None, None, :] < image_shape[:, 1, None, None]
  return jnp.where((rows & cols)[..., None], x, 0.0)


class TwoStageDetector(nn.Module):
  """A ResNet `backbone` (its classifier never used), an FPN `neck`, the RPN's `rpn_head`, a box
  head per stage and none or a mask head per stage, composed as `settings` say."""
  backbone: models.ResNet
  neck: FPN
  rpn_head: nn.Module
  box_heads: Sequence[nn.Module]
  mask_heads: Sequence[nn.Module]
  settings: DetectorSettings

  def setup(self):
    self.rpn = RPN(self.rpn_head, self.settings)
    self.roi_heads = RoIHeads(self.box_heads, self.mask_heads, self.settings)

  def pyramid(self, images: jax.Array, image_shape: jax.Array, train: bool) -> list[jax.Array]:
    """P2..P6 of uint8 canvases (N, H, W, 3)."""
    s = self.settings
    x = normalize_images(images, image_shape, s.pixel_mean, s.pixel_std)
    c = self.backbone(x, train=train, features_only=True)
    return self.neck([c[name] for name in models.FEATURE_NAMES])

  def __call__(self, images: jax.Array, image_shape: jax.Array) -> postprocess.Detections:
    """Detections of uint8 canvases (N, H, W, 3) whose images occupy `image_shape` (N, 2)."""
    features = self.pyramid(images, image_shape, train=False)
    proposals = self.rpn(features, image_shape, images.shape[1:3], train=False)
    return self.roi_heads(features, proposals.boxes, proposals.valid, image_shape)

  def losses(self, batch: dict, key: jax.Array, train: bool = True) -> tuple[jax.Array, dict]:
    """(total loss, per-part losses and statistics) of a batch with ground truth (the data
    contract: image, image_shape, boxes, labels 0..K-1, valid, and with masks the packed
    instance masks; crowd instances are not valid and are left out of matching, as the paper's
    configs do with ignore_iof_thr=-1)."""
    images, image_shape = batch["image"], batch["image_shape"]
    keys = jax.random.split(key, (1 + len(self.settings.stages), images.shape[0]))
    features = self.pyramid(images, image_shape, train=train)
    proposals = self.rpn(features, image_shape, images.shape[1:3], train=True)
    metrics = self.rpn.losses(proposals, image_shape, batch["boxes"], batch["valid"], keys[0])
    total, stage_metrics = self.roi_heads.losses(features, proposals.boxes, proposals.valid,
                                                 batch, keys[1:])
    return metrics["rpn_cls"] + metrics["rpn_box"] + total, {**metrics, **stage_metrics}

  def init_variables(self, images: jax.Array) -> None:
    """Creates every variable cheaply: `model.init(key, images, method="init_variables")` runs
    the backbone, FPN, RPN head and each head once, without proposals or NMS."""
    features = self.pyramid(images, jnp.asarray([images.shape[1:3]] * images.shape[0]),
                            train=False)
    self.rpn_head(features)
    self.roi_heads.init_heads(features)


def assemble(backbone: models.ResNet, settings: DetectorSettings, *,
             box_head: str = head_registry.BOX_DEFAULT,
             mask_head: str = head_registry.MASK_DEFAULT,
             dtype: Any = jnp.float32) -> TwoStageDetector:
  """The detector `settings` describe on `backbone`: an FPN, the RPN and one registered
  `box_head` per stage (and `mask_head` with `settings.with_masks`)."""
  s = settings
  boxes = head_registry.get(box_head, head_registry.BOX)
  box_heads = tuple(boxes.build(num_classes=s.num_classes, class_agnostic=s.class_agnostic,
                                hidden=s.fc_hidden, dtype=dtype) for _ in s.stages)
  mask_heads = ()
  if s.with_masks:
    masks = head_registry.get(mask_head, head_registry.MASK)
    mask_heads = tuple(masks.build(num_classes=s.num_classes, hidden=s.mask_hidden, dtype=dtype)
                       for _ in s.stages)
  return TwoStageDetector(
      backbone=backbone, neck=FPN(channels=s.fpn_channels, dtype=dtype),
      rpn_head=RPNHead(num_anchors=s.num_anchors, channels=s.fpn_channels, dtype=dtype),
      box_heads=box_heads, mask_heads=mask_heads, settings=s)


def create_detector(backbone_name: str, *, num_classes: int, attention: Optional[str] = None,
                    cascade: bool = False, masks: bool = False,
                    convention: Optional[Convention] = None,
                    dtype: Any = jnp.float32, frozen_stages: int = 1, norm_eval: bool = True,
                    frozen_bn: bool = False, width: float = 1.0,
                    box_head: str = head_registry.BOX_DEFAULT,
                    mask_head: str = head_registry.MASK_DEFAULT, **overrides) -> TwoStageDetector:
  """Faster R-CNN (or Cascade R-CNN with `cascade`; their Mask R-CNN versions with `masks`) with
  an FPN on `backbone_name` (resnet18..152) with `attention`, and the registered `box_head` and
  `mask_head`. The paper's fine-tuning (mmdetection v1's ResNet defaults) freezes the stem and
  layer1 (`frozen_stages=1`) and every BatchNorm's statistics (`norm_eval`; `frozen_bn` also
  freezes their scale and bias). `overrides` go to DetectorSettings (`attention_kwargs` to the
  attention blocks)."""
  attention_kwargs = overrides.pop("attention_kwargs", {})
  backbone = models.create_model(backbone_name, attention=attention, dtype=dtype, width=width,
                                 frozen_stages=frozen_stages, norm_eval=norm_eval,
                                 frozen_bn=frozen_bn, **attention_kwargs)
  settings = DetectorSettings(
      num_classes=num_classes, stages=CASCADE_RCNN_STAGES if cascade else FASTER_RCNN_STAGES,
      class_agnostic=cascade, convention=convention or Convention.mmdet_v1(), with_masks=masks,
      **overrides)
  return assemble(backbone, settings, box_head=box_head, mask_head=mask_head, dtype=dtype)
