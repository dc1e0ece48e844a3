"""Model specs: one typed, serialisable description per model family, the one place its settings,
defaults and allowed values are written down.

`ClassifierSpec` is an attention ResNet classifier (Tables 1-5); `DetectorSpec` a two-stage FPN
detector on such a backbone (Tables 6-7). From a spec derive: the config schema's rules for
`config.model` (`config_rules`), the workdir identity written to model.json (`identity`), the
`model` section of an export (`to_section`, `from_section`, which refuses a bad entry in one
line) and the Flax module (`module`). Each field says whether it is a config key (`model.<name>`)
and whether it is part of the identity (it decides the saved state's shapes or its meaning).
Plain Python: the config schema reads the rules before JAX loads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from lct_flax import blocks
from lct_flax import dataset_defaults
from lct_flax import schema_rules as rules
from lct_flax.detection import head_registry

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DETECTORS = ("faster_rcnn", "cascade_rcnn", "mask_rcnn", "cascade_mask_rcnn")
CASCADE_DETECTORS = ("cascade_rcnn", "cascade_mask_rcnn")
MASK_DETECTORS = ("mask_rcnn", "cascade_mask_rcnn")
CONVENTIONS = ("mmdet_v1", "torchvision")
DTYPES = ("float32", "bfloat16", "float16")


def _field(default: Any, rule: Any = None, *, config: bool = True,
           identity: bool = True) -> Any:
  """A spec field; `rule` checks its value (config `model.<name>` and export section alike)."""
  factory = (lambda: dict(default)) if isinstance(default, dict) else None
  extra = {"default_factory": factory} if factory else {"default": default}
  return dataclasses.field(metadata={"rule": rule, "config": config, "identity": identity},
                           **extra)


def plain(value: Any) -> Any:
  """A ConfigDict as a dict; anything else as it is."""
  return value.to_dict() if hasattr(value, "to_dict") else value


class _Spec:
  """What both families derive from their fields."""
  kind: str   # "classifier" | "detector", in messages

  @classmethod
  def config_rules(cls) -> dict:
    """`model.<field>` -> rule, for the config keys among the fields."""
    return {f"model.{f.name}": f.metadata["rule"] for f in dataclasses.fields(cls)
            if f.metadata["config"]}

  @classmethod
  def from_config(cls, config: Mapping[str, Any], num_classes: int) -> Any:
    """The spec of a training config (a ConfigDict or its JSON; keys an older config lacks take
    the defaults)."""
    model = config["model"]
    values = {f.name: plain(model[f.name]) for f in dataclasses.fields(cls)
              if f.metadata["config"] and f.name in model}
    return cls(**values, **cls._derived(config), num_classes=int(num_classes),
               dtype="bfloat16" if config.get("half_precision") else "float32")

  @classmethod
  def _derived(cls, config: Mapping[str, Any]) -> dict:
    return {}

  @classmethod
  def from_section(cls, section: Mapping[str, Any]) -> Any:
    """The spec of an export's `model` section; ValueError naming a missing or bad entry."""
    names = [f.name for f in dataclasses.fields(cls)]
    required = [f.name for f in dataclasses.fields(cls) if f.name in cls.REQUIRED]
    missing = [name for name in required if name not in section]
    if missing:
      raise ValueError(f"{cls.kind} model config lacks {missing}; it needs {required}.")
    values = {name: plain(section[name]) for name in names if name in section}
    if values.get("attention") is None:
      values["attention"] = blocks.NONE
    spec = cls(**values)
    spec.check()
    return spec

  def check(self) -> None:
    """Refuses a field whose value its rule does not allow (None: the detector's default)."""
    for f in dataclasses.fields(self):
      value, rule = getattr(self, f.name), f.metadata["rule"]
      if rule is None or (value is None and not getattr(rule, "required", True)):
        continue
      if not rule.allows(value):
        raise ValueError(f"{self.kind} model config has {f.name}={value!r}; it must be "
                         f"{rule.describe()}.")

  def identity(self) -> dict:
    """The model.json entries of the model (the task adds what training freezes)."""
    found = {f"model.{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)
             if f.metadata["identity"] and f.metadata["config"]}
    return {**found, "num_classes": self.num_classes}

  def to_section(self) -> dict:
    """The export's `model` section (plain JSON)."""
    section = json_ready(dataclasses.asdict(self))
    section["attention"] = None if self.attention == blocks.NONE else self.attention
    return section


def json_ready(value: Any) -> Any:
  """Mappings as dicts and tuples as lists, all the way down: what json.dump writes back."""
  if isinstance(value, Mapping):
    return {key: json_ready(item) for key, item in value.items()}
  if isinstance(value, (tuple, list)):
    return [json_ready(item) for item in value]
  return value


_BACKBONE = {
    "name": lambda: _field("resnet50", rules.OneOf(RESNETS)),
    "attention": lambda: _field(blocks.NONE, blocks.AttentionName()),
    "attention_kwargs": lambda: _field({}, blocks.AttentionOptions()),
    "width": lambda: _field(1.0, rules.Real(minimum=1 / 64)),  # 64 * width stem channels
}


@dataclasses.dataclass(frozen=True)
class ClassifierSpec(_Spec):
  """An attention ResNet classifier (`models.create_model`'s arguments)."""
  name: str = _BACKBONE["name"]()
  attention: str = _BACKBONE["attention"]()
  attention_kwargs: Mapping[str, Any] = _BACKBONE["attention_kwargs"]()
  width: float = _BACKBONE["width"]()
  small_stem: bool = _field(False, rules.Flag())
  num_classes: int = _field(1000, rules.Integer(minimum=1), config=False)
  dtype: str = _field("float32", rules.OneOf(DTYPES), config=False, identity=False)

  kind = "classifier"
  REQUIRED = ("name", "attention", "attention_kwargs", "width", "small_stem", "num_classes",
              "dtype")

  def module(self, **training: Any) -> Any:
    """The `models.ResNet`; `training` options (zero_init_last_bn, bn_group_size, frozen_stages,
    norm_eval, frozen_bn) go to `models.create_model`."""
    import jax.numpy as jnp
    from lct_flax import models
    return models.create_model(
        self.name, attention=None if self.attention == blocks.NONE else self.attention,
        num_classes=int(self.num_classes), dtype=getattr(jnp, self.dtype),
        width=float(self.width), small_stem=bool(self.small_stem), **training,
        **dict(self.attention_kwargs))


@dataclasses.dataclass(frozen=True)
class DetectorSpec(_Spec):
  """A two-stage FPN detector and its backbone (`detection.detector.create_detector`'s
  arguments). Head sizes are the paper's (mmdetection v1's) unless set; the proposal, sample and
  candidate counts, None here, are `DetectorSettings`' defaults."""
  name: str = _BACKBONE["name"]()
  attention: str = _BACKBONE["attention"]()
  attention_kwargs: Mapping[str, Any] = _BACKBONE["attention_kwargs"]()
  width: float = _BACKBONE["width"]()
  detector: str = _field("faster_rcnn", rules.OneOf(DETECTORS))
  convention: str = _field("mmdet_v1", rules.OneOf(CONVENTIONS))   # box arithmetic of the weights
  fpn_channels: int = _field(head_registry.FPN_CHANNELS, rules.Integer(minimum=1, required=False))
  box_head: str = _field(head_registry.BOX_DEFAULT,
                         head_registry.HeadName(head_registry.BOX, required=False))
  fc_hidden: int = _field(head_registry.FC_HIDDEN, rules.Integer(minimum=1, required=False))
  mask_head: str = _field(head_registry.MASK_DEFAULT,
                          head_registry.HeadName(head_registry.MASK, required=False))
  mask_hidden: int = _field(head_registry.MASK_HIDDEN,   # mask detectors
                            rules.Integer(minimum=1, required=False))
  rpn_proposals_train: Optional[int] = _field(None, rules.Integer(minimum=1, required=False),
                                              identity=False)
  rpn_proposals_test: Optional[int] = _field(None, rules.Integer(minimum=1, required=False),
                                             identity=False)
  rcnn_samples: Optional[int] = _field(None, rules.Integer(minimum=1, required=False),
                                       identity=False)
  max_candidates: Optional[int] = _field(None, rules.Integer(minimum=1, required=False),
                                         identity=False)
  num_classes: int = _field(80, rules.Integer(minimum=1), config=False)
  dtype: str = _field("float32", rules.OneOf(DTYPES[:2]), config=False, identity=False)
  pixel_mean: tuple = _field(dataset_defaults.IMAGENET_MEAN_RGB,
                             rules.Numbers(rules.Real(), length=3), config=False, identity=False)
  pixel_std: tuple = _field(dataset_defaults.IMAGENET_STDDEV_RGB,
                            rules.Numbers(rules.Real(), length=3), config=False, identity=False)

  kind = "detector"
  REQUIRED = ("name", "attention", "attention_kwargs", "width", "detector", "convention",
              "num_classes", "dtype", "pixel_mean", "pixel_std")

  @classmethod
  def _derived(cls, config: Mapping[str, Any]) -> dict:
    dataset = config["dataset"]
    return {"pixel_mean": tuple(float(v) for v in dataset["mean"]),
            "pixel_std": tuple(float(v) for v in dataset["std"])}

  @property
  def with_masks(self) -> bool:
    return self.detector in MASK_DETECTORS

  def identity(self) -> dict:
    """Also "task"; the mask head and its width only for the mask detectors."""
    found = super().identity()
    if not self.with_masks:
      del found["model.mask_head"], found["model.mask_hidden"]
    return {"task": "detection", **found}

  def to_section(self) -> dict:
    section = {**super().to_section(), "attention": self.attention}
    for name in ("rpn_proposals_train", "rpn_proposals_test", "rcnn_samples", "max_candidates"):
      if section[name] is None:
        del section[name]
    if not self.with_masks:
      del section["mask_head"], section["mask_hidden"]
    return {"task": "detection", **section}

  @classmethod
  def from_section(cls, section: Mapping[str, Any]) -> "DetectorSpec":
    return super().from_section({k: v for k, v in section.items() if k != "task"})

  def module(self, **training: Any) -> Any:
    """The `detection.detector.TwoStageDetector`; `training` options (frozen_stages, norm_eval,
    frozen_bn: by default nothing frozen) go to its backbone."""
    import jax.numpy as jnp
    from lct_flax.detection import convention as convention_lib
    from lct_flax.detection import detector as detector_lib
    from lct_flax.detection import settings as settings_lib
    overrides = {key: getattr(self, key) for key in ("fpn_channels", "fc_hidden", "mask_hidden",
                                                     "rcnn_samples", "max_candidates")
                 if getattr(self, key) is not None}
    for key, setting in (("rpn_proposals_train", "rpn_train"), ("rpn_proposals_test", "rpn_test")):
      if getattr(self, key) is not None:
        overrides[setting] = settings_lib.ProposalSettings(*(int(getattr(self, key)),) * 3)
    return detector_lib.create_detector(
        self.name, num_classes=int(self.num_classes),
        attention=None if self.attention == blocks.NONE else self.attention,
        cascade=self.detector in CASCADE_DETECTORS, masks=self.with_masks,
        box_head=self.box_head, mask_head=self.mask_head,
        convention=getattr(convention_lib.Convention, self.convention)(),
        dtype=getattr(jnp, self.dtype), width=float(self.width),
        pixel_mean=tuple(self.pixel_mean), pixel_std=tuple(self.pixel_std),
        attention_kwargs=dict(self.attention_kwargs),
        **{"frozen_stages": -1, "norm_eval": False, "frozen_bn": False, **training}, **overrides)
