"""torchvision detection state dicts in and out: `fasterrcnn_resnet50_fpn` and
`maskrcnn_resnet50_fpn` (v1) as `TwoStageDetector`s with torchvision's convention and eval
settings.

torchvision's Faster R-CNN R-50-FPN (models/detection/faster_rcnn.py) is a ResNet-50 body
(`backbone.body.*`, torchvision's resnet names, FrozenBatchNorm2d), an FPN with LastLevelMaxPool
(`backbone.fpn.inner_blocks.i` 1x1 laterals, `backbone.fpn.layer_blocks.i` 3x3 outputs), an
RPNHead (`rpn.head.conv`, `cls_logits`, `bbox_pred`), TwoMLPHead (`roi_heads.box_head.fc6`,
`fc7`) and FastRCNNPredictor (`roi_heads.box_predictor.cls_score`, `bbox_pred`) over 91 classes,
background 0. Both torchvision spellings are read: `inner_blocks.0.weight` / `rpn.head.conv.weight`
(before torchvision 0.13) and `inner_blocks.0.0.weight` / `rpn.head.conv.0.0.weight` (the
Conv2dNormActivation wrappers since), as the modules' own `_load_from_state_dict` upgrades them;
the newer one is written. fc6 reads a torch RoI feature flattened as (C, 7, 7), ours as NHWC
(7, 7, C): its input columns are permuted both ways.

Mask R-CNN (models/detection/mask_rcnn.py) adds MaskRCNNHeads (`roi_heads.mask_head.i.0`, four
3x3 convolutions; `mask_fcn1`..`mask_fcn4` before torchvision 0.13) and MaskRCNNPredictor
(`roi_heads.mask_predictor.conv5_mask`, a ConvTranspose2d whose (in, out, 2, 2) weight maps to
`heads.Deconv2x2`'s kernel as a convolution's does, and `mask_fcn_logits`); its mask_roi_pool
is MultiScaleRoIAlign 14x14 with 2x2 sampling, the box pool's geometry.

The number of classes comes from `cls_score.weight` (91 for COCO; a fine-tuned model's own
count otherwise).

Nothing here imports torch: state dicts may hold torch tensors or NumPy arrays.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lct_flax import interop
from lct_flax import models
from lct_flax.detection import detector
from lct_flax.detection import settings as settings_lib
from lct_flax.detection.convention import Convention

ARCHITECTURES = ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn")
MASK_ARCHITECTURES = ("maskrcnn_resnet50_fpn",)
COCO_NUM_CLASSES = 91          # torchvision's COCO detectors: background 0 and ids 1..90
ROI_SIZE = 7                   # torchvision's box_roi_pool output_size
MAX_CLASSES_ABOVE_THRESHOLD = 19   # softmax scores > 0.05 that can sum to at most 1

# (flax module, flax submodule) -> torch module name, for everything but the ResNet body.
_HEAD_NAMES = {
    ("rpn_head", "conv"): "rpn.head.conv.0.0",
    ("rpn_head", "cls"): "rpn.head.cls_logits",
    ("rpn_head", "reg"): "rpn.head.bbox_pred",
    ("box_heads_0", "fc1"): "roi_heads.box_head.fc6",
    ("box_heads_0", "fc2"): "roi_heads.box_head.fc7",
    ("box_heads_0", "cls"): "roi_heads.box_predictor.cls_score",
    ("box_heads_0", "reg"): "roi_heads.box_predictor.bbox_pred",
    **{("mask_heads_0", f"conv_{i}"): f"roi_heads.mask_head.{i}.0" for i in range(4)},
    ("mask_heads_0", "deconv"): "roi_heads.mask_predictor.conv5_mask",
    ("mask_heads_0", "logits"): "roi_heads.mask_predictor.mask_fcn_logits",
}
_FPN_NAMES = {"lateral": "backbone.fpn.inner_blocks", "output": "backbone.fpn.layer_blocks"}
_BODY = "backbone.body."
_FC6_WEIGHT = "roi_heads.box_head.fc6.weight"
_CLS_WEIGHT = "roi_heads.box_predictor.cls_score.weight"
# Names before torchvision 0.13 -> the current ones (FeaturePyramidNetwork, RPNHead and
# MaskRCNNHeads _load_from_state_dict, version < 2).
_OLD_NAMES = ((re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"),
               r"\1.0.\2"),
              (re.compile(r"^(rpn\.head\.conv)\.(weight|bias)$"), r"\1.0.0.\2"),
              (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
               lambda m: f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"))


def torchvision_name(path: tuple[str, ...], ndim: int) -> tuple[str, str]:
  """Torch name and layout (see `lct_flax.interop.torch_name`) of the detector variable `path`
  = (collection, module..., leaf); e.g. ("params", "neck", "lateral_0", "kernel"), 4 ->
  ("backbone.fpn.inner_blocks.0.0.weight", "conv")."""
  collection, module, *rest = path
  if module == "backbone":
    name, layout = interop.torch_name((collection, *rest), ndim)
    return _BODY + name, layout
  leaf = rest[-1]
  if collection == "params" and len(rest) == 2 and leaf in ("kernel", "bias"):
    prefix = _HEAD_NAMES.get((module, rest[0]))
    kind, _, index = rest[0].partition("_")
    if module == "neck" and kind in _FPN_NAMES and index.isdigit():
      prefix = f"{_FPN_NAMES[kind]}.{index}.0"
    if prefix is not None:
      if leaf == "bias":
        return f"{prefix}.bias", "same"
      return f"{prefix}.weight", "conv" if ndim == 4 else "linear"
  raise ValueError(f"no torchvision name for the detector variable {'/'.join(path)}.")


def _fc6_columns(weight: np.ndarray, channels: int, to_nhwc: bool) -> np.ndarray:
  """fc6's (out, in) weight with its input columns reordered from torch's (C, 7, 7) flattening to
  our (7, 7, C) one (`to_nhwc`) or back."""
  out = weight.shape[0]
  if to_nhwc:
    return weight.reshape(out, channels, ROI_SIZE, ROI_SIZE).transpose(0, 2, 3, 1).reshape(out, -1)
  return weight.reshape(out, ROI_SIZE, ROI_SIZE, channels).transpose(0, 3, 1, 2).reshape(out, -1)


def _current_names(state_dict: Mapping[str, Any], channels: int) -> dict[str, Any]:
  """`state_dict` with the older torchvision names upgraded and fc6's columns in our order
  (a weight of another shape is left alone, for the shape check to report)."""
  renamed = {}
  for name, value in state_dict.items():
    for pattern, replacement in _OLD_NAMES:
      name = pattern.sub(replacement, name)
    if name in renamed:
      raise ValueError(f"cannot load the torchvision state dict: {name} is given twice (under "
                       f"its older and its current name); keep one.")
    renamed[name] = value
  fc6 = renamed.get(_FC6_WEIGHT)
  if fc6 is not None:
    fc6 = interop.as_numpy(fc6)
    if fc6.ndim == 2 and fc6.shape[1] == channels * ROI_SIZE * ROI_SIZE:
      renamed[_FC6_WEIGHT] = _fc6_columns(fc6, channels, to_nhwc=True)
  return renamed


def torchvision_detector(arch: str = "fasterrcnn_resnet50_fpn", *,
                         num_classes: int = COCO_NUM_CLASSES,
                         bn_epsilon: float = 0.0) -> detector.TwoStageDetector:
  """The `TwoStageDetector` of torchvision's `arch` with `num_classes` classes (background
  included, as torchvision counts them), torchvision's convention and its FasterRCNN defaults
  (models/detection/faster_rcnn.py FasterRCNN.__init__, rpn.py, roi_heads.py), which MaskRCNN
  keeps, adding its mask head (mask_rcnn.py: 14x14 RoIs, four convolutions of 256):

  * RPN, eval: the best 1000 anchors per level (rpn_pre_nms_top_n_test), boxes with a side
    below 1e-3 dropped (RegionProposalNetwork.min_size), NMS 0.7 within each level
    (rpn_nms_thresh), the best 1000 overall (rpn_post_nms_top_n_test); training 2000 / 2000.
    (rpn_score_thresh 0.0 keeps every sigmoid score: no setting.)
  * Boxes: score > 0.05 (box_score_thresh), sides >= 1e-2, per-class NMS 0.5 (box_nms_thresh),
    at most 100 (box_detections_per_img). torchvision caps no candidates; a RoI's softmax
    scores sum to 1, so at most 19 of its classes score above 0.05, and `max_candidates` =
    1000 x 19 never drops one.
  * ResNet-50 with frozen BatchNorm (FrozenBatchNorm2d) and, for fine-tuning, the stem and
    layer1 frozen (trainable_backbone_layers=3). `bn_epsilon`: 0.0 for torchvision's COCO_V1
    weights (loaded with overwrite_eps(model, 0.0)); 1e-5 for a model built without them.
  """
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown torchvision detector {arch!r}; choose one of {ARCHITECTURES}.")
  if num_classes < 2:
    raise ValueError(f"a torchvision detector has the background and at least one class, got "
                     f"num_classes={num_classes}.")
  backbone = models.create_model("resnet50", frozen_stages=1, frozen_bn=True)
  settings = settings_lib.DetectorSettings(
      num_classes=num_classes - 1, convention=Convention.torchvision(),
      with_masks=arch in MASK_ARCHITECTURES, mask_hidden=256, mask_roi_size=14,
      rpn_train=settings_lib.ProposalSettings(2000, 2000, 2000, 0.7),
      rpn_test=settings_lib.ProposalSettings(1000, 1000, 1000, 0.7),
      score_threshold=0.05, nms_threshold=0.5, max_detections=100,
      max_candidates=1000 * min(num_classes - 1, MAX_CLASSES_ABOVE_THRESHOLD))
  return detector.assemble(backbone.clone(bn_epsilon=bn_epsilon), settings)


def abstract_variables(model: detector.TwoStageDetector) -> dict:
  """Shapes and dtypes of `model`'s variables (jax.eval_shape; nothing is computed)."""
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8)
  return jax.eval_shape(lambda key, x: model.init(key, x, method="init_variables"),
                        jax.random.key(0), images)


def load_torchvision_detector(state_dict: Mapping[str, Any],
                              arch: str = "fasterrcnn_resnet50_fpn", *,
                              bn_epsilon: float = 0.0) -> tuple[detector.TwoStageDetector, dict]:
  """(model, variables) of torchvision's `arch` from its state dict (`model.state_dict()` or the
  published weights; torch tensors or NumPy arrays). Every tensor is placed by name: a missing,
  unknown or misshapen one raises ValueError naming them all in one line (BatchNorm
  `num_batches_tracked` entries are accepted and ignored). `bn_epsilon`: see
  `torchvision_detector`. Run it with `lct_flax.detection.detect`."""
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown torchvision detector {arch!r}; choose one of {ARCHITECTURES}.")
  classes = state_dict.get(_CLS_WEIGHT)
  num_classes = COCO_NUM_CLASSES if classes is None else int(np.shape(classes)[0])
  model = torchvision_detector(arch, num_classes=num_classes, bn_epsilon=bn_epsilon)
  target = traverse_util.flatten_dict(abstract_variables(model))
  variables = interop.variables_from_state_dict(
      target, _current_names(state_dict, model.settings.fpn_channels), namer=torchvision_name)
  return model, variables


def to_torchvision_detector_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """torchvision state dict (current names, FrozenBatchNorm2d: no `num_batches_tracked`) of a
  detector's variables; the inverse of `load_torchvision_detector`, exactly. torchvision's
  `model.load_state_dict(..., strict=True)` accepts it (after torch.from_numpy), with frozen or
  ordinary BatchNorm."""
  state_dict = {name: value for name, value in
                interop.to_torch_state_dict(variables, namer=torchvision_name).items()
                if not name.endswith(".num_batches_tracked")}
  fc6 = state_dict[_FC6_WEIGHT]
  state_dict[_FC6_WEIGHT] = np.ascontiguousarray(
      _fc6_columns(fc6, fc6.shape[1] // (ROI_SIZE * ROI_SIZE), to_nhwc=False))
  return state_dict
