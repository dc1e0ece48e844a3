"""Table 6 and 7 configs: the paper's detectors, backbones and recipe (mmdetection v1's 1x schedule
at 4 images per step), their parameter deltas against the plain backbone, the mask heads' size,
and the learning rate."""

import functools
import importlib

import jax
import jax.numpy as jnp
import pytest

from lct_flax import config_schema
from lct_flax.tasks.detection import TASK as DETECTION

# (config module, detector, attention, Table 6's AP, parameters added to the plain detector).
TABLE6 = [
    ("faster_rcnn_r101_fpn_1x", "faster_rcnn", "none", 38.5, 0),
    ("se_faster_rcnn_r101_fpn_1x", "faster_rcnn", "se", 39.8, 4_777_712),
    ("lct_faster_rcnn_r101_fpn_1x", "faster_rcnn", "lct", 40.0, 65_024),
    ("cascade_rcnn_r101_fpn_1x", "cascade_rcnn", "none", 42.0, 0),
    ("se_cascade_rcnn_r101_fpn_1x", "cascade_rcnn", "se", 43.4, 4_777_712),
    ("lct_cascade_rcnn_r101_fpn_1x", "cascade_rcnn", "lct", 43.6, 65_024),
]
# (config module, detector, attention, Table 7's mask AP, Table 6's box AP, parameters added).
TABLE7 = [
    ("mask_rcnn_r101_fpn_1x", "mask_rcnn", "none", 35.9, 39.4, 0),
    ("se_mask_rcnn_r101_fpn_1x", "mask_rcnn", "se", 36.9, 40.7, 4_777_712),
    ("lct_mask_rcnn_r101_fpn_1x", "mask_rcnn", "lct", 37.0, 40.9, 65_024),
    ("cascade_mask_rcnn_r101_fpn_1x", "cascade_mask_rcnn", "none", 37.0, 42.6, 0),
    ("se_cascade_mask_rcnn_r101_fpn_1x", "cascade_mask_rcnn", "se", 37.7, 43.7, 4_777_712),
    ("lct_cascade_mask_rcnn_r101_fpn_1x", "cascade_mask_rcnn", "lct", 38.1, 44.1, 65_024),
]
# mmdetection v1's FCNMaskHead (81 classes): four 3x3 convolutions 256 -> 256, the 2x2 transposed
# convolution 256 -> 256, the 1x1 logits 256 -> 81, with biases.
FCN_MASK_HEAD_PARAMETERS = 4 * (256 * 256 * 9 + 256) + (256 * 256 * 4 + 256) + (256 * 81 + 81)
COCO_TRAIN_IMAGES = 117_266      # train2017 images with annotations (mmdetection trains on these)


def load(module):
  return importlib.import_module(f"configs.detection.{module}").get_config()


@functools.lru_cache(maxsize=None)
def parameter_count(module):
  """Parameters of a config module's detector at 80 classes (traced abstractly, once per run)."""
  model = DETECTION.create_model(load(module), num_classes=80)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3),
                                                                             jnp.uint8),
                                                method="init_variables"))
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("module,detector,attention,paper_ap,added", TABLE6)
def test_table6_configs_are_the_papers(module, detector, attention, paper_ap, added):
  config = load(module)
  config_schema.validate(config)
  assert (config.task, config.model.name, config.model.detector, config.model.attention) == (
      "detection", "resnet101", detector, attention)
  assert f"AP {paper_ap}" in importlib.import_module(f"configs.detection.{module}").__doc__
  assert config.batch_size == 4 and config.num_epochs == 12 and config.learning_rate == 0.005
  assert (config.momentum, config.weight_decay, config.grad_clip_norm) == (0.9, 1e-4, 35.0)
  assert (config.frozen_stages, config.norm_eval, config.model.convention) == (1, True,
                                                                              "mmdet_v1")
  assert tuple(config.init_skip) == ("fc.*",)
  assert tuple(config.dataset.img_scale) == (1333, 800) and config.dataset.flip_ratio == 0.5
  if attention == "lct":
    assert config.model.attention_kwargs.to_dict() == {
        "groups": 64, "w_init": 0.0, "b_init": 1.0, "use_norm": True, "use_transform": True}
  baseline = ("faster_rcnn_r101_fpn_1x" if detector == "faster_rcnn" else
              "cascade_rcnn_r101_fpn_1x")
  assert parameter_count(module) - parameter_count(baseline) == added


@pytest.mark.parametrize("module,detector,attention,mask_ap,box_ap,added", TABLE7)
def test_table7_configs_are_the_papers(module, detector, attention, mask_ap, box_ap, added):
  config = load(module)
  config_schema.validate(config)
  doc = importlib.import_module(f"configs.detection.{module}").__doc__
  assert f"mask AP (Table 7): AP {mask_ap}," in doc and f"box AP (Table 6): AP {box_ap}," in doc
  assert f"--config=configs/detection/{module}.py" in doc
  assert (config.model.name, config.model.detector, config.model.attention) == (
      "resnet101", detector, attention)
  assert config.model.mask_hidden == 256
  box_module = module.replace("cascade_mask_", "cascade_").replace(   # Table 6's row
      "mask_rcnn", "faster_rcnn")                                     # without masks
  box_config = load(box_module)
  for key in ("batch_size", "num_epochs", "learning_rate", "lr_decay_epochs", "warmup_steps",
              "grad_clip_norm", "frozen_stages", "norm_eval", "init_skip"):
    assert config[key] == box_config[key], key
  assert config.dataset.to_dict() == box_config.dataset.to_dict()
  stages = 3 if detector == "cascade_mask_rcnn" else 1
  assert parameter_count(module) - parameter_count(box_module) == (
      stages * FCN_MASK_HEAD_PARAMETERS)
  if attention != "none":
    baseline = ("mask_rcnn_r101_fpn_1x" if detector == "mask_rcnn" else
                "cascade_mask_rcnn_r101_fpn_1x")
    assert parameter_count(module) - parameter_count(baseline) == added


def test_detection_schedule_is_mmdetections_1x():
  from lct_flax import optimization
  config = load("faster_rcnn_r101_fpn_1x")
  steps_per_epoch = COCO_TRAIN_IMAGES // config.batch_size
  schedule = optimization.create_learning_rate_schedule(config, steps_per_epoch)
  lr = lambda step: float(schedule(step))
  assert lr(0) == pytest.approx(0.005 / 3)                  # warm-up from 1/3 over 500 steps
  assert lr(250) == pytest.approx(0.005 * (1 / 3 + 2 / 3 * 0.5))
  assert lr(500) == pytest.approx(0.005)
  assert lr(8 * steps_per_epoch - 1) == pytest.approx(0.005)
  assert lr(8 * steps_per_epoch) == pytest.approx(0.0005)   # the 9th epoch
  assert lr(11 * steps_per_epoch) == pytest.approx(0.00005)  # the 12th epoch
