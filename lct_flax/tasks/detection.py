"""Object detection and instance segmentation (the paper's Tables 6-7) on COCO-layout data.

The model is the `model_specs.DetectorSpec` of `config.model` (Faster, Cascade, Mask or Cascade
Mask R-CNN with FPN on an attention ResNet), its backbone frozen as `frozen_stages`, `norm_eval`
and `frozen_bn` say (mmdetection's meanings); `init_from` loads an
ImageNet ResNet into the backbone. The loss is `TwoStageDetector.losses`; the data canvas batches
(`detection.data`); evaluation COCO box (and mask) AP (`detection.evaluation`, results JSONs in
the workdir). An export's `model` section is that spec with `task: "detection"`; its `dataset`
section is the detection data config.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from lct_flax import freezing
from lct_flax import loop
from lct_flax import model_specs
from lct_flax import train_state
from lct_flax.detection import evaluation
from lct_flax.detection import head_registry
from lct_flax.detection import steps
from lct_flax.tasks import base

class Detection(base.Task):
  name = "detection"
  spec = model_specs.DetectorSpec
  pretrained_path = ("backbone",)
  identity_defaults = {"frozen_stages": -1, "frozen_bn": False, "model.convention": "mmdet_v1",
                       "model.box_head": head_registry.BOX_DEFAULT,
                       "model.mask_head": head_registry.MASK_DEFAULT}
  # len(coco_layout.COCO_CATEGORIES), len(coco_layout.SHAPES_CATEGORIES) (which import tfds)
  planned_classes = {"coco_instances/2017": 80, "coco_instances/shapes": 4}

  def create_model(self, config, num_classes):
    frozen_stages, frozen_bn = base.frozen(config)
    return self.spec.from_config(config, num_classes).module(
        frozen_stages=frozen_stages, norm_eval=bool(config.get("norm_eval", False)),
        frozen_bn=frozen_bn)

  def init_variables(self, model, dataset, rng):
    canvas = tuple(dataset["canvases"][0])
    return model.init(rng, jnp.zeros((1, *canvas, 3), jnp.uint8), method="init_variables")

  def parameter_labels(self, params, config):
    """The backbone's by mmdetection's rules; every other part (FPN, RPN, heads) trainable."""
    frozen_stages, frozen_bn = base.frozen(config)
    if not freezing.freezes_anything(frozen_stages, frozen_bn):
      return None
    labels = jax.tree.map(lambda _: freezing.TRAINABLE, params)
    labels["backbone"] = freezing.parameter_labels(params["backbone"],
                                                   frozen_stages=frozen_stages,
                                                   frozen_bn=frozen_bn)
    return labels

  def sizes(self, config):
    from lct_flax.detection import data  # TensorFlow: only when the dataset is needed
    data.prepare_dataset(config.dataset)
    return (data.get_dataset_info(config.dataset).num_classes,
            data.steps_per_epoch(config.dataset, config.batch_size))

  def loss_fn(self, experiment):
    return functools.partial(steps.loss, model=experiment.model)

  def abstract_batches(self, config, global_batch):
    """`detection.data`'s batch fields on the largest canvas, `dataset.max_instances` instances
    per image (Mask R-CNN: and their bit-packed masks)."""
    canvas = max((tuple(c) for c in config.dataset.canvases), key=lambda c: c[0] * c[1])
    b, m = global_batch, config.dataset.max_instances
    fields = {"image": ((b, *canvas, 3), jnp.uint8), "image_shape": ((b, 2), jnp.int32),
              "boxes": ((b, m, 4), jnp.float32), "labels": ((b, m), jnp.int32),
              "valid": ((b, m), jnp.bool_), "masks": ((b, m, canvas[0], canvas[1] // 8), jnp.uint8)}
    with_masks = self.spec.from_config(config, num_classes=1).with_masks
    keys = steps.MASK_TRAIN_KEYS if with_masks else steps.TRAIN_KEYS
    batch = lambda names: {k: jax.ShapeDtypeStruct(*fields[k]) for k in names}
    return batch(keys), batch(steps.EVAL_KEYS)

  def compile_eval_step(self, experiment):
    """`detection.steps.detect_step`: the batch's detections, sharded as the batch."""
    return evaluation.compile_detect_step(experiment.model, experiment.mesh)

  def training(self, config: ml_collections.ConfigDict, workdir: str) -> loop.Training:
    """Eval results JSONs go to `workdir` (detections_<step>.json)."""
    from lct_flax.detection import data  # TensorFlow: only when training
    experiment = self.build_experiment(config)
    if not config.get("init_from"):
      logging.warning("No init_from: the backbone starts from random weights (the paper's "
                      "detectors start from an ImageNet export of the same backbone).")
    model, mesh = experiment.model, experiment.mesh
    p_detect_step = self.compile_eval_step(experiment)
    with_masks = model.settings.with_masks
    train_keys = steps.train_keys(model)

    def train_batches(start_step: int, stop_step: int):
      batches = data.create_train_iterator(config.dataset, global_batch_size=config.batch_size,
                                           seed=config.seed, start_step=start_step,
                                           stop_step=stop_step, with_masks=with_masks)
      return (steps.device_batch(batch, train_keys) for batch in batches)

    def evaluate(state: train_state.TrainState) -> dict:
      metrics = evaluation.coco_evaluate(
          config.dataset, state.variables, p_detect_step, mesh,
          global_batch_size=config.batch_size, max_candidates=model.settings.max_candidates,
          results_path=os.path.join(workdir, f"detections_{int(state.step)}.json"))
      return {f"eval_{k}": v for k, v in metrics.items()}

    return self.assemble_training(
        experiment, workdir, train_batches=train_batches, evaluate=evaluate,
        describe_eval=functools.partial(evaluation.describe_columns, prefix="eval_"),
        description=(f"{config.model.detector} {config.model.name} ({config.model.attention}) "
                     f"on {config.dataset.name}"),
        log_keys=("rpn_cls", "rpn_box", "stage0_cls", "stage0_box", "stage0_accuracy")
        + (("stage0_mask",) if with_masks else ()))

  def dataset_section(self, config):
    """The detection data config of a training config, as plain JSON."""
    return model_specs.json_ready(model_specs.plain(config["dataset"]))

  def evaluate_export(self, export_dir, model, variables, config, *, dataset=None,
                      progress=True, **options):
    del progress
    if dataset is not None:
      raise ValueError("--dataset does not apply to a detector export; it evaluates on its own "
                       "dataset (choose the split with --split, the data with --data_dir).")
    return evaluation.evaluate_export(export_dir, model, variables, config, **options)

  def format_result(self, result: Mapping[str, Any]) -> str:
    return evaluation.format_result(result)


TASK = Detection()
