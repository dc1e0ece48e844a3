"""Classification: pure train/eval steps, optimizer and schedule, and the task for the loop.

The steps are pure functions compiled with `jax.jit` over a device mesh with one "data" axis: the
batch is sharded along it and the state replicated, so BatchNorm statistics (computed over the
batch axis) are those of the global batch, as with synchronised BatchNorm across GPUs.
`train_and_evaluate(config, workdir)` is the whole run (`lct_flax.loop` with the classification
task); it resumes from the newest checkpoint in `workdir` and is importable from a notebook.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lct_flax import checkpointing
from lct_flax import config_schema
from lct_flax import freezing
from lct_flax import loop
from lct_flax import models
from lct_flax import parallel
from lct_flax import pixels
from lct_flax.loop import TrainState, TrainingError, checkpointer_for  # noqa: F401  (re-exported)
from lct_flax.loop import abstract_state_of



# ---------------------------------------------------------------------------------------------
# Model, optimizer and schedule from the config.


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> models.ResNet:
  m = config.model
  return models.create_model(
      m.name, attention=m.attention, num_classes=num_classes,
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32, width=m.width,
      small_stem=m.small_stem, zero_init_last_bn=m.zero_init_last_bn,
      bn_group_size=config.bn_group_size or None, frozen_stages=_frozen_stages(config),
      norm_eval=bool(config.get("norm_eval", False)), frozen_bn=_frozen_bn(config),
      **m.attention_kwargs.to_dict())


def _frozen_stages(config: ml_collections.ConfigDict) -> int:
  return int(config.get("frozen_stages", -1))


def _frozen_bn(config: ml_collections.ConfigDict) -> bool:
  return bool(config.get("frozen_bn", False))


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate: linear warm-up, then the step schedule (lr x `lr_decay_factor` at each
  of `lr_decay_epochs`, as PyTorch's StepLR/MultiStepLR stepped once per epoch) or cosine decay to
  0 at the end of training.

  The warm-up lasts `warmup_steps` (when > 0) or `warmup_epochs` and rises linearly from
  `warmup_ratio` x lr (default 0) to lr: mmcv's linear warm-up (mmdetection: 500 steps from 1/3).
  """
  total = total_steps(config, steps_per_epoch)
  warmup_steps = (config.get("warmup_steps", 0)
                  or int(round(config.warmup_epochs * steps_per_epoch)))
  if config.schedule == "step":
    main = optax.piecewise_constant_schedule(
        config.learning_rate,
        {int(e * steps_per_epoch) - warmup_steps: config.lr_decay_factor
         for e in config.lr_decay_epochs})
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(config.learning_rate, max(1, total - warmup_steps))
  else:
    raise ValueError(f"unknown schedule {config.schedule!r}; use 'step' or 'cosine'.")
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(config.get("warmup_ratio", 0.0) * config.learning_rate,
                                 config.learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """torch.optim.SGD: g <- g + wd * p (coupled decay, every parameter); buf <- m * buf + g;
  p <- p - lr * buf. With `grad_clip_norm` > 0 the gradients are first scaled down to that global
  L2 norm (mmdetection's grad_clip: clip_grad_norm_ before the SGD step, which adds the decay)."""
  clip = config.get("grad_clip_norm", 0.0)
  return optax.chain(
      *([optax.clip_by_global_norm(clip)] if clip > 0 else []),
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """num_train_steps when set, else num_epochs of `steps_per_epoch` steps."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch


# ---------------------------------------------------------------------------------------------
# Pure steps.


def init_state(model: models.ResNet, optimizer: optax.GradientTransformation, seed: int,
               image_shape: tuple[int, ...]) -> TrainState:
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  return TrainState.create(model.init(init_rng, jnp.zeros((1, *image_shape)), train=False),
                           optimizer, rng)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32, with optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Per-example 1.0 where the label is among the k largest logits."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def train_step(state: TrainState, batch: dict, *, model: models.ResNet,
               optimizer: optax.GradientTransformation, label_smoothing: float,
               param_labels: Any = None, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None) -> tuple[TrainState, dict]:
  """One SGD step on a global batch. Metrics are means over the global batch, plus `finite`
  (loss and gradients all finite) for the loop's NaN guard. uint8 images are normalised with the
  dataset's `mean`/`std` first (`pixels.normalize`); float images are taken as normalised. With
  `param_labels` (`freezing.parameter_labels`), the frozen parameters' gradients are never
  computed."""
  images = pixels.normalize(batch["image"], mean, std)

  def loss_fn(params):
    logits, new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(state.rng, state.step)})
    loss = jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))
    return loss, (logits, new_vars["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if param_labels is not None:
    grads = freezing.zero_frozen(grads, param_labels)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  metrics = {
      "loss": loss,
      "top1": jnp.mean(topk_correct(logits, batch["label"], 1)),
      "top5": jnp.mean(topk_correct(logits, batch["label"], 5)),
      "grad_norm": grad_norm,
      "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
  }
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(variables: dict, batch: dict, *, model: models.ResNet,
              mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None) -> dict:
  """Sums over the masked (real) examples of a padded eval batch: loss, top-1, top-5, count.
  Images as in `train_step`."""
  logits = model.apply(variables, pixels.normalize(batch["image"], mean, std), train=False)
  mask = batch["mask"].astype(jnp.float32)
  return {
      "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
      "top1": jnp.sum(topk_correct(logits, batch["label"], 1) * mask),
      "top5": jnp.sum(topk_correct(logits, batch["label"], 5) * mask),
      "count": jnp.sum(mask),
  }


# ---------------------------------------------------------------------------------------------
# The loop.


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses a config with a missing, unknown or out-of-range key (lct_flax.config_schema)."""
  config_schema.validate(config)


def model_identity(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """The config entries that decide the shapes of the saved state."""
  m = config.model
  return {"model.name": m.name, "model.attention": m.attention,
          "model.attention_kwargs": m.attention_kwargs.to_dict(), "model.width": m.width,
          "model.small_stem": m.small_stem, "num_classes": num_classes,
          "frozen_stages": _frozen_stages(config), "frozen_bn": _frozen_bn(config)}


def evaluate(variables: dict, batches: Iterator[dict], eval_fn: Callable) -> dict:
  """Loss, top-1 and top-5 over every example of the eval split (padding masked out);
  `eval_fn(variables, batch)` is a compiled `eval_step`."""
  totals = None
  for batch in batches:
    sums = eval_fn(variables, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise TrainingError("the eval split is empty.")
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"eval_loss": float(totals["loss"]) / count, "eval_top1": float(totals["top1"]) / count,
          "eval_top5": float(totals["top5"]) / count, "eval_count": count}


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What a config determines before any state exists: mesh, data sizes, model, optimizer."""
  config: ml_collections.ConfigDict
  mesh: Any
  num_classes: int
  steps_per_epoch: int
  total_steps: int
  model: models.ResNet
  schedule: optax.Schedule
  optimizer: optax.GradientTransformation
  param_labels: Any = None   # freezing.parameter_labels when something is frozen, else None

  @property
  def replicated(self):
    return parallel.replicated_sharding(self.mesh)

  @property
  def data_sharding(self):
    return parallel.batch_sharding(self.mesh)

  def init_fn(self) -> Callable[[], TrainState]:
    """A compiled function that creates the initial, replicated TrainState."""
    image_shape = (self.config.dataset.image_size, self.config.dataset.image_size, 3)
    return jax.jit(functools.partial(init_state, self.model, self.optimizer, self.config.seed,
                                     image_shape), out_shardings=self.replicated)

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the TrainState, without creating it."""
    return abstract_state_of(self.init_fn(), self.mesh)


def build_experiment(config: ml_collections.ConfigDict, *, num_classes: Optional[int] = None,
                     steps_per_epoch: Optional[int] = None) -> Experiment:
  """Checks `config` and builds everything it determines. The dataset (prepared first if it can
  be) gives the number of classes and steps per epoch unless they are passed in."""
  check_config(config)
  mesh = parallel.create_mesh()
  if num_classes is None or steps_per_epoch is None:
    from lct_flax import input_pipeline  # TensorFlow: only when the dataset is needed
    input_pipeline.prepare_dataset(config.dataset)
    num_classes = input_pipeline.get_dataset_info(config.dataset).num_classes
    steps_per_epoch = input_pipeline.steps_per_epoch(config.dataset, config.batch_size)
  schedule = create_learning_rate_schedule(config, steps_per_epoch)
  model = create_model(config, num_classes)
  optimizer = create_optimizer(config, schedule)
  param_labels = None
  if freezing.freezes_anything(_frozen_stages(config), _frozen_bn(config)):
    image_shape = (1, config.dataset.image_size, config.dataset.image_size, 3)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(image_shape)))["params"]
    param_labels = freezing.parameter_labels(params, frozen_stages=_frozen_stages(config),
                                             frozen_bn=_frozen_bn(config))
    optimizer = freezing.partition_optimizer(optimizer, param_labels)
  return Experiment(config=config, mesh=mesh, num_classes=num_classes,
                    steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps(config, steps_per_epoch), model=model,
                    schedule=schedule, optimizer=optimizer, param_labels=param_labels)


def restore_state(config: ml_collections.ConfigDict, workdir: str,
                  step: Optional[int] = None) -> TrainState:
  """The TrainState of checkpoint `step` (default: the newest) of the run in `workdir`. Needs no
  dataset (the number of classes comes from the workdir's model.json) and writes nothing."""
  path = os.path.join(workdir, "model.json")
  if not os.path.exists(path):
    raise checkpointing.CheckpointError(f"{workdir} holds no training run (no model.json); "
                                        f"pass the --workdir that train.py wrote.")
  with open(path) as f:
    num_classes = json.load(f)["num_classes"]
  # The optimizer state's structure does not depend on the schedule, so any steps_per_epoch fits.
  experiment = build_experiment(config, num_classes=num_classes, steps_per_epoch=1)
  checkpointer = checkpointer_for(workdir, config, create=False)
  try:
    return checkpointer.restore(experiment.abstract_state(), step)
  finally:
    checkpointer.close()


def classification_task(config: ml_collections.ConfigDict, *,
                        train_batches: Optional[Callable[[int], Iterator[dict]]] = None
                        ) -> loop.Task:
  """The loop's task for `config`: the experiment, its compiled steps, its data and evaluation.
  `train_batches(start_step)` can replace the configured train input."""
  from lct_flax import input_pipeline  # TensorFlow: only when training
  experiment = build_experiment(config)
  replicated, data_sharding = experiment.replicated, experiment.data_sharding
  mean, std = input_pipeline.pixel_mean_std(config.dataset)
  p_train_step = jax.jit(
      functools.partial(train_step, model=experiment.model, optimizer=experiment.optimizer,
                        label_smoothing=config.label_smoothing,
                        param_labels=experiment.param_labels, mean=mean, std=std),
      in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated),
      donate_argnums=(0,))
  p_eval_step = jax.jit(functools.partial(eval_step, model=experiment.model, mean=mean, std=std),
                        in_shardings=(replicated, data_sharding), out_shardings=replicated)

  def evaluate_state(state: TrainState) -> dict:
    batches = input_pipeline.create_eval_iterator(config.dataset,
                                                  global_batch_size=config.batch_size)
    return evaluate(state.variables, input_pipeline.prefetch_to_mesh(batches, data_sharding),
                    p_eval_step)

  if train_batches is None:
    train_batches = functools.partial(input_pipeline.create_train_iterator, config.dataset,
                                      global_batch_size=config.batch_size, seed=config.seed)
  return loop.Task(
      config=config, mesh=experiment.mesh,
      identity=model_identity(config, experiment.num_classes),
      steps_per_epoch=experiment.steps_per_epoch, total_steps=experiment.total_steps,
      schedule=experiment.schedule, init_state=experiment.init_fn(),
      abstract_state=experiment.abstract_state, train_step=p_train_step,
      train_batches=lambda start_step: train_batches(start_step=start_step),
      evaluate=evaluate_state, describe_eval=_describe_eval,
      description=f"{config.model.name} ({config.model.attention})", log_keys=("top1",))


def _describe_eval(metrics: dict) -> str:
  return (f"loss {metrics['eval_loss']:.4f}  top1 {metrics['eval_top1']:.4f}  "
          f"top5 {metrics['eval_top5']:.4f}  ({metrics['eval_count']:.0f} examples)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       train_batches: Optional[Callable[[int], Iterator[dict]]] = None,
                       force_unlock: bool = False) -> dict:
  """Trains and evaluates as `config` says, writing checkpoints and logs to `workdir`.

  Running it again on the same workdir resumes from the newest checkpoint, with the data stream
  at the same position, so the result equals an uninterrupted run's. The run holds the workdir's
  lock throughout (lct_flax.workdir_lock; `force_unlock` takes over one left on another host).
  `train_batches(start_step)` can replace the configured train input with any iterator of
  host-local batches `{"image", "label"}` (uint8 images are normalised with `config.dataset`'s
  mean/std, float images are taken as normalised). Returns the final eval metrics (with "step").
  """
  check_config(config)
  return loop.run(lambda: classification_task(config, train_batches=train_batches), workdir,
                  force_unlock=force_unlock)
