"""A detector from its `model` section, the one description training and exports share.

The section (plain JSON, an export.json's `model`) holds `task: "detection"`, the backbone (name,
attention, attention_kwargs, width), the detector (faster_rcnn | cascade_rcnn | mask_rcnn |
cascade_mask_rcnn), the box convention, the head sizes, the proposal and candidate counts, the
number of classes, the compute dtype and the pixel mean/std. `lct_flax.export` writes it with a
`dataset` section (the detection data config: canvases, image scale, box convention, splits), so
an export evaluates on COCO (`python -m lct_flax.evaluate`) and detects with
`lct_flax.detection.detect`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from lct_flax.detection import convention as convention_lib
from lct_flax.detection import detector as detector_lib

TASK = "detection"
CONVENTIONS = {"mmdet_v1": convention_lib.Convention.mmdet_v1,
               "torchvision": convention_lib.Convention.torchvision}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DETECTORS = ("faster_rcnn", "cascade_rcnn", "mask_rcnn", "cascade_mask_rcnn")
CASCADE_DETECTORS = ("cascade_rcnn", "cascade_mask_rcnn")
MASK_DETECTORS = ("mask_rcnn", "cascade_mask_rcnn")
# config.model keys a section carries beside the backbone's (absent: the detector's default).
OPTIONAL_KEYS = ("fpn_channels", "fc_hidden", "rpn_proposals_train", "rpn_proposals_test",
                 "rcnn_samples", "max_candidates", "mask_hidden")
REQUIRED_KEYS = ("name", "attention", "attention_kwargs", "width", "detector", "convention",
                 "num_classes", "dtype", "pixel_mean", "pixel_std")


def model_section(config: Mapping[str, Any], num_classes: int) -> dict:
  """The section of a detection training config (a ConfigDict or its JSON dict)."""
  m, d = config["model"], config["dataset"]
  kwargs = m.get("attention_kwargs") or {}
  section = {
      "task": TASK, "name": m["name"], "attention": m.get("attention", "none"),
      "attention_kwargs": dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs),
      "width": float(m.get("width", 1.0)), "detector": m["detector"],
      "convention": m["convention"], "num_classes": int(num_classes),
      "dtype": "bfloat16" if config.get("half_precision") else "float32",
      "pixel_mean": [float(v) for v in d["mean"]], "pixel_std": [float(v) for v in d["std"]],
  }
  section.update({key: int(m[key]) for key in OPTIONAL_KEYS if m.get(key)})
  return section


def build_detector(section: Mapping[str, Any], *, frozen_stages: int = -1,
                   norm_eval: bool = False,
                   frozen_bn: bool = False) -> detector_lib.TwoStageDetector:
  """The detector a section describes (ValueError naming a missing or unknown entry)."""
  missing = [key for key in REQUIRED_KEYS if key not in section]
  if missing:
    raise ValueError(f"detector model config lacks {missing}; it needs {list(REQUIRED_KEYS)}.")
  if section["convention"] not in CONVENTIONS or section["dtype"] not in DTYPES:
    raise ValueError(f"unknown convention {section['convention']!r} or dtype "
                     f"{section['dtype']!r}; use {sorted(CONVENTIONS)} and {sorted(DTYPES)}.")
  if section["detector"] not in DETECTORS:
    raise ValueError(f"unknown detector {section['detector']!r}; use one of {DETECTORS}.")
  for key in OPTIONAL_KEYS:
    value = section.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise ValueError(f"detector model config has {key}={value!r}; it must be an integer >= 1 "
                       f"(or absent for the default).")
  overrides = {}
  for key, setting in (("rpn_proposals_train", "rpn_train"), ("rpn_proposals_test", "rpn_test")):
    if section.get(key):
      overrides[setting] = detector_lib.ProposalSettings(*(int(section[key]),) * 3)
  for key in ("rcnn_samples", "max_candidates", "fpn_channels", "fc_hidden", "mask_hidden"):
    if section.get(key):
      overrides[key] = int(section[key])
  attention = None if section["attention"] in (None, "none") else section["attention"]
  return detector_lib.create_detector(
      section["name"], num_classes=int(section["num_classes"]), attention=attention,
      cascade=section["detector"] in CASCADE_DETECTORS,
      masks=section["detector"] in MASK_DETECTORS,
      convention=CONVENTIONS[section["convention"]](), dtype=DTYPES[section["dtype"]],
      frozen_stages=frozen_stages, norm_eval=norm_eval, frozen_bn=frozen_bn,
      width=float(section["width"]), pixel_mean=tuple(section["pixel_mean"]),
      pixel_std=tuple(section["pixel_std"]), attention_kwargs=dict(section["attention_kwargs"]),
      **overrides)
