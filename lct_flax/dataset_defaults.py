"""The dataset section of a config and its defaults, without TensorFlow.

Configs and the command-line tools build and check dataset configs before deciding whether any
data has to be read; keeping these definitions apart from `input_pipeline` (which imports
TensorFlow, about 5 s) lets them refuse a bad command at once. `input_pipeline` re-exports them.
"""

from __future__ import annotations

from ml_collections import config_dict

# The ImageNet RGB mean/std in 0..255: torchvision's (0.485, 0.456, 0.406) and (0.229, 0.224,
# 0.225) x 255, mmdetection's img_norm_cfg; every classifier's and detector's default.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STDDEV_RGB = (58.395, 57.12, 57.375)


def default_dataset_config(name="imagenet2012", **overrides):
  """The ``dataset`` ConfigDict with every field ``input_pipeline`` reads, defaults as in the paper.

  ``eval_split`` is "validation" for imagenet2012 and "test" otherwise. ``resize_size`` None means
  ``round(image_size / 0.875)`` (256 for 224). ``mean``/``std`` are RGB in 0..255 scale.
  ``cache`` keeps the encoded training records in memory across epochs (small datasets only).
  """
  config = config_dict.ConfigDict({
      "name": name,
      "data_dir": config_dict.placeholder(str),
      "manual_dir": config_dict.placeholder(str),
      "train_split": "train",
      "eval_split": "validation" if name == "imagenet2012" else "test",
      "image_size": 224,
      "resize_size": config_dict.placeholder(int),
      "crop_area_range": (0.08, 1.0),
      "aspect_ratio_range": (3 / 4, 4 / 3),
      "random_flip": True,
      "shuffle_buffer": 16 * 1024,
      "cache": False,
      "mean": IMAGENET_MEAN_RGB,
      "std": IMAGENET_STDDEV_RGB,
  })
  config.update(overrides)
  return config


def pixel_mean_std(dataset_config) -> tuple[tuple, tuple]:
  """The RGB ``mean`` and ``std`` (0..255 scale, defaults filled in) that the jitted steps
  normalise this dataset's uint8 batches with (``pixels.normalize``)."""
  defaults = default_dataset_config(dataset_config.name)
  return tuple(tuple(float(v) for v in dataset_config.get(key, defaults[key]))
               for key in ("mean", "std"))
