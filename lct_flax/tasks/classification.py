"""Image classification (the paper's Tables 1-5): a ResNet with an attention block on a tfds split.

The model is the `model_specs.ClassifierSpec` of `config.model` (`models.create_model`); the
loss is the cross-entropy of `classifier_steps`; the data is `input_pipeline` (ImageNet from the
tars, any tfds set, the embedded digits); evaluation is top-1/top-5 over every example of the
eval split exactly once.
An export's `model` section is that spec (name, attention, attention_kwargs, width, small_stem,
num_classes, dtype) and its `dataset` section the eval preprocessing (name, eval_split, data_dir,
image_size, resize_size, mean, std).
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections

from lct_flax import classifier_evaluation
from lct_flax import classifier_steps
from lct_flax import dataset_defaults
from lct_flax import freezing
from lct_flax import loop
from lct_flax import model_specs
from lct_flax import parallel
from lct_flax import train_state
from lct_flax.tasks import base

PREPROCESSING_KEYS = ("image_size", "resize_size", "mean", "std")


class Classification(base.Task):
  name = "classification"
  spec = model_specs.ClassifierSpec
  identity_defaults = {"frozen_stages": -1, "frozen_bn": False}
  planned_classes = {"imagenet2012": 1000, "sklearn_digits": 10}
  # bench/RESULTS.md, input pipeline, "ours, train": bench/input_pipeline.py on a 2-core AMD EPYC.
  input_cpu_ms_per_image = 2.38

  def create_model(self, config, num_classes):
    frozen_stages, frozen_bn = base.frozen(config)
    return self.spec.from_config(config, num_classes).module(
        zero_init_last_bn=config.model.zero_init_last_bn,
        bn_group_size=config.bn_group_size or None, frozen_stages=frozen_stages,
        norm_eval=bool(config.get("norm_eval", False)), frozen_bn=frozen_bn)

  def init_variables(self, model, dataset, rng):
    size = int(dataset["image_size"])
    return model.init(rng, jnp.zeros((1, size, size, 3)), train=False)

  def parameter_labels(self, params, config):
    frozen_stages, frozen_bn = base.frozen(config)
    if not freezing.freezes_anything(frozen_stages, frozen_bn):
      return None
    return freezing.parameter_labels(params, frozen_stages=frozen_stages, frozen_bn=frozen_bn)

  def sizes(self, config):
    from lct_flax import input_pipeline  # TensorFlow: only when the dataset is needed
    input_pipeline.prepare_dataset(config.dataset)
    return (input_pipeline.get_dataset_info(config.dataset).num_classes,
            input_pipeline.steps_per_epoch(config.dataset, config.batch_size))

  def loss_fn(self, experiment):
    mean, std = dataset_defaults.pixel_mean_std(experiment.config.dataset)
    return functools.partial(classifier_steps.loss, model=experiment.model,
                             label_smoothing=experiment.config.label_smoothing, mean=mean,
                             std=std)

  def abstract_batches(self, config, global_batch):
    """uint8 images of `dataset.image_size` and int32 labels (eval: and the real-example mask)."""
    size = config.dataset.image_size
    train = {"image": jax.ShapeDtypeStruct((global_batch, size, size, 3), jnp.uint8),
             "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32)}
    return train, {**train, "mask": jax.ShapeDtypeStruct((global_batch,), jnp.bool_)}

  def compile_eval_step(self, experiment):
    """`classifier_steps.eval_step`: sums over the batch, replicated."""
    mean, std = dataset_defaults.pixel_mean_std(experiment.config.dataset)
    replicated = parallel.replicated_sharding(experiment.mesh)
    return jax.jit(
        functools.partial(classifier_steps.eval_step, model=experiment.model, mean=mean, std=std),
        in_shardings=(replicated, parallel.batch_sharding(experiment.mesh)),
        out_shardings=replicated)

  def training(self, config: ml_collections.ConfigDict, workdir: str, *,
               train_batches: Optional[Callable[[int], Iterator[dict]]] = None) -> loop.Training:
    """`train_batches(start_step)` can replace the configured train input with any iterator of
    host-local batches {"image", "label"} (uint8 images are normalised with `config.dataset`'s
    mean/std, float images are taken as normalised)."""
    from lct_flax import input_pipeline  # TensorFlow: only when training
    experiment = self.build_experiment(config)
    p_eval_step = self.compile_eval_step(experiment)
    data_sharding = parallel.batch_sharding(experiment.mesh)

    def evaluate(state: train_state.TrainState) -> dict:
      batches = input_pipeline.create_eval_iterator(config.dataset,
                                                    global_batch_size=config.batch_size)
      return classifier_steps.evaluate(
          state.variables, input_pipeline.prefetch_to_mesh(batches, data_sharding), p_eval_step)

    def configured_batches(start_step, stop_step):
      return input_pipeline.create_train_iterator(
          config.dataset, global_batch_size=config.batch_size, seed=config.seed,
          start_step=start_step, stop_step=stop_step)

    def given_batches(start_step, stop_step):
      return itertools.islice(train_batches(start_step=start_step), stop_step - start_step)

    return self.assemble_training(
        experiment, workdir,
        train_batches=configured_batches if train_batches is None else given_batches,
        evaluate=evaluate, describe_eval=describe_eval,
        description=f"{config.model.name} ({config.model.attention})", log_keys=("top1",))

  def dataset_section(self, config):
    d = config["dataset"]
    defaults = dataset_defaults.default_dataset_config(d["name"])
    section = {"name": d["name"], "eval_split": d.get("eval_split", defaults.eval_split),
               "data_dir": d.get("data_dir")}
    for key in PREPROCESSING_KEYS:
      value = d.get(key, defaults[key])
      section[key] = list(value) if isinstance(value, (tuple, list)) else value
    if section["resize_size"] is None:
      section["resize_size"] = int(round(section["image_size"] / 0.875))
    return section

  def evaluate_export(self, export_dir, model, variables, config, **options):
    return classifier_evaluation.evaluate_export(export_dir, model, variables, config, **options)

  def format_result(self, result):
    return classifier_evaluation.format_result(result)


def describe_eval(metrics: Mapping[str, float]) -> str:
  return (f"loss {metrics['eval_loss']:.4f}  top1 {metrics['eval_top1']:.4f}  "
          f"top5 {metrics['eval_top5']:.4f}  ({metrics['eval_count']:.0f} examples)")


TASK = Classification()
