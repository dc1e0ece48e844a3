"""The detection ``dataset`` config: its fields, defaults and validation (no TensorFlow here).

Defaults are the paper's (mmdetection v1's ``faster_rcnn_r101_fpn_1x.py`` data settings):
``img_scale=(1333, 800)`` with the aspect ratio kept, flip ratio 0.5, ImageNet mean/std (applied
on the device), images padded to multiples of 32. Batches are padded to one of a few fixed
canvases so that each canvas compiles once: (800, 1344) for landscape and (1344, 800) for portrait
images hold every image resized to fit 1333x800.
"""

from __future__ import annotations

import dataclasses

from ml_collections import config_dict

from lct_flax import dataset_defaults

DATASETS = ("coco_instances/2017", "coco_instances/shapes")


class DetectionDataError(ValueError):
  """A detection dataset or its config cannot give batches as asked (one-line message)."""


@dataclasses.dataclass(frozen=True)
class BoxConvention:
  """How annotation boxes ``[x, y, w, h]`` become pixel boxes on the resized image, and back.

  ``pixel_offset``: 1.0 in mmdetection v1, whose boxes are inclusive pixel indices:
  ``x2 = x + w - 1`` (mmdet/datasets/coco.py ``_parse_ann_info``), flips map ``x -> W - 1 - x``
  (pipelines/transforms.py ``RandomFlip.bbox_flip``) and results widths are ``x2 - x1 + 1``
  (core/evaluation/coco_utils.py ``xyxy2xywh``); 0.0 in torchvision (``x2 = x + w``,
  ``x -> W - x``).
  ``per_axis_scale``: False in mmdetection v1, whose boxes are multiplied by the one
  ``scale_factor`` of ``mmcv.imrescale`` (and divided by it for results); True in torchvision
  (``transform.resize_boxes``: each axis by resized / original size).
  ``clip``: mmdetection v1 clips ground-truth boxes to ``[0, W - 1] x [0, H - 1]``
  (``Resize._resize_bboxes``); torchvision keeps them as they are.
  """

  name: str
  pixel_offset: float
  per_axis_scale: bool
  clip: bool

  @classmethod
  def mmdet_v1(cls) -> BoxConvention:
    return cls("mmdet_v1", pixel_offset=1.0, per_axis_scale=False, clip=True)

  @classmethod
  def torchvision(cls) -> BoxConvention:
    return cls("torchvision", pixel_offset=0.0, per_axis_scale=True, clip=False)

  @classmethod
  def named(cls, name: str) -> BoxConvention:
    constructors = {"mmdet_v1": cls.mmdet_v1, "torchvision": cls.torchvision}
    if name not in constructors:
      raise DetectionDataError(f"dataset.box_convention={name!r} is not one of "
                               f"{sorted(constructors)}.")
    return constructors[name]()


def default_dataset_config(name: str = "coco_instances/2017", **overrides
                           ) -> config_dict.ConfigDict:
  """The detection ``dataset`` ConfigDict with every field the pipeline reads (paper defaults).

  ``img_scale``: (long, short) edge limits of mmcv's keep-ratio rescale. ``canvases``: (height,
  width) pairs, multiples of ``size_divisor``; each batch is padded to one of them.
  ``max_instances``: instances per image in a train batch (larger counts are refused).
  ``min_image_size``: train images with a shorter side below it are skipped (mmdetection's
  ``_filter_imgs``). ``box_convention``: "mmdet_v1" or "torchvision" (``BoxConvention``).
  ``mean``/``std``: RGB, 0..255, for the device-side normalisation (batches carry uint8).
  ``manual_dir``: the COCO directory (``coco_layout``) the dataset is prepared from.
  """
  config = config_dict.ConfigDict({
      "name": name,
      "data_dir": config_dict.placeholder(str),
      "manual_dir": config_dict.placeholder(str),
      "train_split": "train",
      "eval_split": "validation",
      "img_scale": (1333, 800),
      "canvases": ((800, 1344), (1344, 800)),
      "size_divisor": 32,
      "flip_ratio": 0.5,
      "max_instances": 128,
      "min_image_size": 32,
      "box_convention": "mmdet_v1",
      "mean": dataset_defaults.IMAGENET_MEAN_RGB,
      "std": dataset_defaults.IMAGENET_STDDEV_RGB,
  })
  config.update(overrides)
  return config


def shapes_dataset_config(**overrides) -> config_dict.ConfigDict:
  """``default_dataset_config`` for the generated ``coco_instances/shapes`` (96-160 px images).

  Images are rescaled to fit 160x128 and padded to (128, 160) or (160, 128): the demo's scale.
  """
  config = default_dataset_config(
      "coco_instances/shapes", img_scale=(160, 128), canvases=((128, 160), (160, 128)),
      max_instances=16)
  config.update(overrides)
  return config


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """A detection dataset config resolved and checked."""

  name: str
  data_dir: str | None
  manual_dir: str | None
  train_split: str
  eval_split: str
  img_scale: tuple
  canvases: tuple
  size_divisor: int
  flip_ratio: float
  max_instances: int
  min_image_size: int
  box_convention: BoxConvention
  mean: tuple
  std: tuple


def settings(dataset_config) -> DataSettings:
  """Reads ``dataset_config`` (missing fields take their defaults) and checks it.

  Refused, one line each: an unknown dataset, a canvas that is not a positive multiple of
  ``size_divisor``, a bad ``img_scale``, ``flip_ratio`` or ``max_instances``, an unknown box
  convention.
  """
  defaults = default_dataset_config(dataset_config.get("name", "coco_instances/2017"))
  values = {field.name: dataset_config.get(field.name, defaults[field.name])
            for field in dataclasses.fields(DataSettings)}
  if values["name"] not in DATASETS:
    raise DetectionDataError(f"unknown detection dataset {values['name']!r}; use one of "
                             f"{', '.join(DATASETS)}.")
  values["box_convention"] = BoxConvention.named(values["box_convention"])
  values["img_scale"] = tuple(int(v) for v in values["img_scale"])
  values["canvases"] = tuple(tuple(int(v) for v in canvas) for canvas in values["canvases"])
  values["mean"] = tuple(float(v) for v in values["mean"])
  values["std"] = tuple(float(v) for v in values["std"])
  _check(values)
  return DataSettings(**values)


def _check(values):
  divisor = values["size_divisor"]
  if divisor < 1:
    raise DetectionDataError(f"dataset.size_divisor={divisor} must be positive (mmdetection: 32).")
  if len(values["img_scale"]) != 2 or min(values["img_scale"]) < 1:
    raise DetectionDataError(f"dataset.img_scale={values['img_scale']} must be two positive "
                             f"edge lengths (long, short), e.g. (1333, 800).")
  if not values["canvases"]:
    raise DetectionDataError("dataset.canvases is empty; give (height, width) pairs, e.g. "
                             "((800, 1344), (1344, 800)).")
  for canvas in values["canvases"]:
    if len(canvas) != 2 or min(canvas) < 1 or any(side % divisor for side in canvas):
      fixed = tuple(-(-max(side, 1) // divisor) * divisor for side in canvas)
      raise DetectionDataError(f"dataset.canvases: {canvas} is not a (height, width) pair of "
                               f"positive multiples of dataset.size_divisor={divisor}; use e.g. "
                               f"{fixed}.")
  if not 0.0 <= values["flip_ratio"] <= 1.0:
    raise DetectionDataError(f"dataset.flip_ratio={values['flip_ratio']} is not in [0, 1].")
  if values["max_instances"] < 1:
    raise DetectionDataError(f"dataset.max_instances={values['max_instances']} must be >= 1.")
