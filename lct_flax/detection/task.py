"""Detection as a task of the shared training loop (`lct_flax.loop`): the paper's Tables 6-7 runs.

`detection_task(config, workdir)` builds the detector (`detector.create_detector` from
`config.model`), its optimizer and schedule (the classification trainer's: SGD with coupled weight
decay, step schedule, mmcv's linear warm-up, gradient clipping), the compiled steps
(`detection.training`), the canvas batches (`detection.data`) and the COCO evaluation
(`detection.coco_eval`, results JSON in the workdir). `init_from` loads an ImageNet ResNet into the
backbone; `frozen_stages`, `norm_eval` and `frozen_bn` freeze it as mmdetection does.
`train_and_evaluate(config, workdir)` runs it (train.py calls it for `config.task="detection"`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from lct_flax import config_schema
from lct_flax import freezing
from lct_flax import loop
from lct_flax import parallel
from lct_flax import trainer
from lct_flax.detection import detector as detector_lib
from lct_flax.detection import evaluation
from lct_flax.detection import exporting
from lct_flax.detection import training

def create_model(config: ml_collections.ConfigDict,
                 num_classes: int) -> detector_lib.TwoStageDetector:
  """The detector `config.model` describes (backbone, attention, detector, convention, sizes),
  its backbone frozen as `frozen_stages`, `norm_eval` and `frozen_bn` say."""
  return exporting.build_detector(
      exporting.model_section(config, num_classes),
      frozen_stages=config.get("frozen_stages", -1), norm_eval=config.get("norm_eval", False),
      frozen_bn=config.get("frozen_bn", False))


def model_identity(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """The config entries that decide the shapes of the saved state (a mask detector's also its
  mask head width) or what its weights mean (the box convention they were trained under)."""
  m = config.model
  identity = {"task": "detection", "model.name": m.name, "model.attention": m.attention,
              "model.attention_kwargs": m.attention_kwargs.to_dict(), "model.width": m.width,
              "model.detector": m.detector, "model.convention": m.convention,
              "model.fpn_channels": m.get("fpn_channels", 256),
              "model.fc_hidden": m.get("fc_hidden", 1024), "num_classes": num_classes,
              "frozen_stages": config.get("frozen_stages", -1),
              "frozen_bn": config.get("frozen_bn", False)}
  if m.detector in exporting.MASK_DETECTORS:
    identity["model.mask_hidden"] = m.get("mask_hidden", 256)
  return identity


def check_config(config: ml_collections.ConfigDict) -> None:
  """The schema, and the one rule across sections: the data's box convention is the model's."""
  config_schema.validate(config)
  data_convention = config.dataset.get("box_convention", "mmdet_v1")
  if data_convention != config.model.convention:
    raise config_schema.ConfigError(
        f"config.dataset.box_convention={data_convention!r} differs from "
        f"config.model.convention={config.model.convention!r}; set both to the same value.")


def init_state(model: detector_lib.TwoStageDetector, optimizer: Any, seed: int,
               canvas: tuple) -> loop.TrainState:
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  return loop.TrainState.create(model.init(init_rng, jnp.zeros((1, *canvas, 3), jnp.uint8),
                                           method="init_variables"), optimizer, rng)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What a detection config determines before any state exists."""
  config: ml_collections.ConfigDict
  mesh: Any
  num_classes: int
  steps_per_epoch: int
  total_steps: int
  model: detector_lib.TwoStageDetector
  schedule: Any
  optimizer: Any
  param_labels: Any
  init_fn: Callable[[], loop.TrainState]

  @property
  def replicated(self):
    return parallel.replicated_sharding(self.mesh)

  def abstract_state(self) -> loop.TrainState:
    return loop.abstract_state_of(self.init_fn, self.mesh)


def build_experiment(config: ml_collections.ConfigDict, *, num_classes: int,
                     steps_per_epoch: int) -> Experiment:
  """The detector, schedule, optimizer (frozen parameters partitioned out) and compiled init."""
  check_config(config)
  mesh = parallel.create_mesh()
  schedule = trainer.create_learning_rate_schedule(config, steps_per_epoch)
  model = create_model(config, num_classes)
  optimizer = trainer.create_optimizer(config, schedule)
  canvas = tuple(config.dataset.canvases[0])
  param_labels = None
  frozen_stages, frozen_bn = config.get("frozen_stages", -1), config.get("frozen_bn", False)
  if freezing.freezes_anything(frozen_stages, frozen_bn):
    shapes = jax.eval_shape(functools.partial(init_state, model, optimizer, config.seed, canvas))
    param_labels = training.backbone_labels(shapes.params, frozen_stages=frozen_stages,
                                            frozen_bn=frozen_bn)
    optimizer = freezing.partition_optimizer(optimizer, param_labels)
  init_fn = jax.jit(functools.partial(init_state, model, optimizer, config.seed, canvas),
                    out_shardings=parallel.replicated_sharding(mesh))
  return Experiment(config=config, mesh=mesh, num_classes=num_classes,
                    steps_per_epoch=steps_per_epoch,
                    total_steps=trainer.total_steps(config, steps_per_epoch), model=model,
                    schedule=schedule, optimizer=optimizer, param_labels=param_labels,
                    init_fn=init_fn)


def restore_state(config: ml_collections.ConfigDict, workdir: str,
                  step: Optional[int] = None) -> loop.TrainState:
  """The TrainState of checkpoint `step` (default: the newest) of the detection run in
  `workdir`; needs no dataset (the number of classes comes from model.json) and writes nothing."""
  with open(os.path.join(workdir, "model.json")) as f:
    num_classes = json.load(f)["num_classes"]
  experiment = build_experiment(config, num_classes=num_classes, steps_per_epoch=1)
  checkpointer = loop.checkpointer_for(workdir, config, create=False)
  try:
    return checkpointer.restore(experiment.abstract_state(), step)
  finally:
    checkpointer.close()


def detection_task(config: ml_collections.ConfigDict, workdir: str) -> loop.Task:
  """The loop's task for a detection `config`; eval results JSONs go to `workdir`."""
  from lct_flax.detection import data  # TensorFlow: only when training

  check_config(config)
  data.prepare_dataset(config.dataset)
  info = data.get_dataset_info(config.dataset)
  experiment = build_experiment(
      config, num_classes=info.num_classes,
      steps_per_epoch=data.steps_per_epoch(config.dataset, config.batch_size))
  if not config.get("init_from"):
    logging.warning("No init_from: the backbone starts from random weights (the paper's "
                    "detectors start from an ImageNet export of the same backbone).")
  model, optimizer, param_labels = (experiment.model, experiment.optimizer,
                                    experiment.param_labels)
  mesh, replicated = experiment.mesh, experiment.replicated
  data_sharding = parallel.batch_sharding(mesh)
  p_train_step = jax.jit(
      functools.partial(training.train_step, model=model, optimizer=optimizer,
                        param_labels=param_labels),
      in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated),
      donate_argnums=(0,))
  p_detect_step = evaluation.compile_detect_step(model, mesh)

  with_masks = model.settings.with_masks
  train_keys = training.train_keys(model)

  def train_batches(start_step: int):
    batches = data.create_train_iterator(config.dataset, global_batch_size=config.batch_size,
                                         seed=config.seed, start_step=start_step,
                                         with_masks=with_masks)
    return (training.device_batch(batch, train_keys) for batch in batches)

  def evaluate(state: loop.TrainState) -> dict:
    metrics = evaluation.coco_evaluate(
        config.dataset, state.variables, p_detect_step, mesh,
        global_batch_size=config.batch_size, max_candidates=model.settings.max_candidates,
        results_path=os.path.join(workdir, f"detections_{int(state.step)}.json"))
    return {f"eval_{k}": v for k, v in metrics.items()}

  return loop.Task(
      config=config, mesh=mesh, identity=model_identity(config, info.num_classes),
      steps_per_epoch=experiment.steps_per_epoch, total_steps=experiment.total_steps,
      schedule=experiment.schedule, init_state=experiment.init_fn,
      abstract_state=experiment.abstract_state, train_step=p_train_step,
      train_batches=train_batches, evaluate=evaluate, describe_eval=describe_eval,
      description=(f"{config.model.detector} {config.model.name} ({config.model.attention}) "
                   f"on {config.dataset.name}"),
      log_keys=("rpn_cls", "rpn_box", "stage0_cls", "stage0_box", "stage0_accuracy")
      + (("stage0_mask",) if with_masks else ()),
      pretrained_path=("backbone",))


def describe_eval(metrics: dict) -> str:
  """Table 6's six columns (box AP), and a Mask R-CNN's Table 7 columns (mask AP), in percent."""
  return evaluation.describe_columns(metrics, prefix="eval_")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       force_unlock: bool = False) -> dict:
  """Trains and evaluates a detector as `config` says (see `lct_flax.loop.run`)."""
  check_config(config)
  return loop.run(lambda: detection_task(config, workdir), workdir, force_unlock=force_unlock)
