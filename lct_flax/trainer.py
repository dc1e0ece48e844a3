"""Data-parallel training: TrainState, pure train/eval steps, optimizer and schedule, the loop.

The steps are pure functions compiled with `jax.jit` over a device mesh with one "data" axis: the
batch is sharded along it and the state replicated, so BatchNorm statistics (computed over the
batch axis) are those of the global batch, as with synchronised BatchNorm across GPUs.
`train_and_evaluate(config, workdir)` is the whole run; it resumes from the newest checkpoint in
`workdir` and is importable from a notebook.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from lct_flax import checkpointing
from lct_flax import fileio
from lct_flax import input_pipeline
from lct_flax import models
from lct_flax import parallel
from lct_flax import pixels
from lct_flax import preemption
from lct_flax import profiling

# Keys every training config has (DESIGN.md); the loop refuses a config that lacks one.
REQUIRED_KEYS = ("batch_size", "num_epochs", "num_train_steps", "seed", "checkpoint_every_steps",
                 "model.name", "model.attention", "dataset.name")

# Config entries that fix the shapes of the saved state: a workdir's checkpoints only fit a config
# that agrees on them.
MODEL_IDENTITY_KEYS = ("model.name", "model.attention", "model.attention_kwargs", "model.width",
                       "model.small_stem", "num_classes")


class TrainingError(RuntimeError):
  """Training cannot go on (non-finite loss, incompatible workdir, bad config)."""


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: the step, the model's variables, the optimizer
  state and the base RNG key (raw uint32 key data; each step folds in its step number)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


# ---------------------------------------------------------------------------------------------
# Model, optimizer and schedule from the config.


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> models.ResNet:
  m = config.model
  return models.create_model(
      m.name, attention=m.attention, num_classes=num_classes,
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32, width=m.width,
      small_stem=m.small_stem, zero_init_last_bn=m.zero_init_last_bn,
      bn_group_size=config.bn_group_size or None, **m.attention_kwargs.to_dict())


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate: linear warm-up, then the step schedule (lr x `lr_decay_factor` at each
  of `lr_decay_epochs`, as PyTorch's StepLR/MultiStepLR stepped once per epoch) or cosine decay to
  0 at the end of training."""
  total_steps = _total_steps(config, steps_per_epoch)
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  if config.schedule == "step":
    main = optax.piecewise_constant_schedule(
        config.learning_rate,
        {int(e * steps_per_epoch) - warmup_steps: config.lr_decay_factor
         for e in config.lr_decay_epochs})
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(config.learning_rate, max(1, total_steps - warmup_steps))
  else:
    raise ValueError(f"unknown schedule {config.schedule!r}; use 'step' or 'cosine'.")
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, config.learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """torch.optim.SGD: g <- g + wd * p (coupled decay, every parameter); buf <- m * buf + g;
  p <- p - lr * buf."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))


def _total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch


# ---------------------------------------------------------------------------------------------
# Pure steps.


def init_state(model: models.ResNet, optimizer: optax.GradientTransformation, seed: int,
               image_shape: tuple[int, ...]) -> TrainState:
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_rng, jnp.zeros((1, *image_shape)), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=optimizer.init(params),
                    rng=rng)


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
               mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None) -> tuple[TrainState, dict]:
  """One SGD step on a global batch. Metrics are means over the global batch, plus `finite`
  (loss and gradients all finite) for the loop's NaN guard. uint8 images are normalised with the
  dataset's `mean`/`std` first (`pixels.normalize`); float images are taken as normalised."""
  images = pixels.normalize(batch["image"], mean, std)

  def loss_fn(params):
    logits, new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(state.rng, state.step)})
    loss = jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))
    return loss, (logits, new_vars["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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
  """Refuses a config that lacks a required key."""
  for key in REQUIRED_KEYS:
    node = config
    for part in key.split("."):
      if part not in node:
        raise ValueError(f"config has no {key!r}; every training config needs {REQUIRED_KEYS}.")
      node = node[part]


def model_identity(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """The config entries that decide the shapes of the saved state."""
  m = config.model
  return {"model.name": m.name, "model.attention": m.attention,
          "model.attention_kwargs": m.attention_kwargs.to_dict(), "model.width": m.width,
          "model.small_stem": m.small_stem, "num_classes": num_classes}


def check_workdir_compatible(workdir: str, identity: dict) -> None:
  """Refuses to resume from a workdir whose run had another model (nothing is overwritten)."""
  path = os.path.join(workdir, "model.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  if saved != json.loads(json.dumps(identity)):
    diffs = ", ".join(f"{k}: {saved.get(k)!r} in the workdir vs {identity.get(k)!r} now"
                      for k in MODEL_IDENTITY_KEYS if saved.get(k) != identity.get(k))
    raise TrainingError(f"workdir {workdir} holds a run of another model ({diffs}); "
                        f"use a new --workdir or the workdir's own config.")


def check_workdir_writable(workdir: str) -> None:
  """Creates `workdir` if needed and refuses one that cannot be written, before any work."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
      pass
  except OSError as error:
    raise TrainingError(f"workdir {workdir} is not writable ({error.strerror or error}); "
                        f"choose another --workdir.") from error


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Progress:
  """Step timing, images/s and ETA between log points."""

  def __init__(self, start_step: int, total_steps: int, batch_size: int):
    self.total_steps, self.batch_size = total_steps, batch_size
    self._last_step, self._last_time = start_step, time.perf_counter()

  def report(self, step: int) -> dict:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    step_time = (now - self._last_time) / steps
    self._last_step, self._last_time = step, now
    return {"step_time": step_time, "images_per_sec": self.batch_size / step_time,
            "eta_seconds": step_time * (self.total_steps - step)}


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
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated),
        jax.eval_shape(self.init_fn()))


def build_experiment(config: ml_collections.ConfigDict, *, num_classes: Optional[int] = None,
                     steps_per_epoch: Optional[int] = None) -> Experiment:
  """Checks `config` and builds everything it determines. The dataset (prepared first if it can
  be) gives the number of classes and steps per epoch unless they are passed in."""
  check_config(config)
  mesh = parallel.create_mesh()
  if num_classes is None or steps_per_epoch is None:
    input_pipeline.prepare_dataset(config.dataset)
    num_classes = input_pipeline.get_dataset_info(config.dataset).num_classes
    steps_per_epoch = input_pipeline.steps_per_epoch(config.dataset, config.batch_size)
  schedule = create_learning_rate_schedule(config, steps_per_epoch)
  return Experiment(config=config, mesh=mesh, num_classes=num_classes,
                    steps_per_epoch=steps_per_epoch,
                    total_steps=_total_steps(config, steps_per_epoch),
                    model=create_model(config, num_classes), schedule=schedule,
                    optimizer=create_optimizer(config, schedule))


def checkpointer_for(workdir: str, config: ml_collections.ConfigDict, *,
                     create: bool = True) -> checkpointing.Checkpointer:
  return checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.get("keep_checkpoints", 3), create=create)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       train_batches: Optional[Callable[[int], Iterator[dict]]] = None) -> dict:
  """Trains and evaluates as `config` says, writing checkpoints and logs to `workdir`.

  Running it again on the same workdir resumes from the newest checkpoint, with the data stream
  at the same position, so the result equals an uninterrupted run's. `train_batches(start_step)`
  can replace the configured train input with any iterator of host-local batches
  `{"image", "label"}` (uint8 images are normalised with `config.dataset`'s mean/std, float images
  are taken as normalised). Returns the final eval metrics (with "step").
  """
  experiment = build_experiment(config)
  parallel.check_batch_size(config.batch_size, experiment.mesh)
  model, schedule = experiment.model, experiment.schedule
  steps_per_epoch, total_steps = experiment.steps_per_epoch, experiment.total_steps
  replicated, data_sharding = experiment.replicated, experiment.data_sharding
  identity = model_identity(config, experiment.num_classes)
  is_writer = jax.process_index() == 0
  check_workdir_writable(workdir)
  check_workdir_compatible(workdir, identity)

  checkpointer = checkpointer_for(workdir, config)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(experiment.abstract_state())
    logging.info("Resumed from %s", checkpointer.path(checkpointer.latest_step()))
  else:
    state = experiment.init_fn()()
  if is_writer:
    fileio.write_json_atomically(os.path.join(workdir, "model.json"), identity)
    fileio.write_json_atomically(os.path.join(workdir, "config.json"),
                          json.loads(config.to_json_best_effort()))

  mean, std = input_pipeline.pixel_mean_std(config.dataset)
  p_train_step = jax.jit(
      functools.partial(train_step, model=model, optimizer=experiment.optimizer,
                        label_smoothing=config.label_smoothing, mean=mean, std=std),
      in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated),
      donate_argnums=(0,))
  p_eval_step = jax.jit(functools.partial(eval_step, model=model, mean=mean, std=std),
                        in_shardings=(replicated, data_sharding), out_shardings=replicated)

  def eval_batches():
    return input_pipeline.prefetch_to_mesh(
        input_pipeline.create_eval_iterator(config.dataset, global_batch_size=config.batch_size),
        data_sharding)

  start_step = int(state.step)
  if train_batches is None:
    train_batches = functools.partial(input_pipeline.create_train_iterator, config.dataset,
                                      global_batch_size=config.batch_size, seed=config.seed)
  batches = input_pipeline.prefetch_to_mesh(train_batches(start_step=start_step), data_sharding)

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_writer)
  progress = _Progress(start_step, total_steps, config.batch_size)
  eval_every = config.eval_every_epochs * steps_per_epoch
  pending_metrics = []
  eval_metrics = {}
  logging.info("Training %s (%s) for %d steps (%d per epoch) on %d devices, from step %d",
               config.model.name, config.model.attention, total_steps, steps_per_epoch,
               experiment.mesh.devices.size, start_step)
  profiler = profiling.StepProfiler(workdir, config.profile_start_step, config.profile_num_steps)
  step = start_step
  preempted = False
  try:
    with preemption.PreemptionWatcher() as watcher:
      while step < total_steps and not preempted:
        profiler.step(step, wait_for=state)
        state, metrics = p_train_step(state, next(batches))
        step += 1
        pending_metrics.append(metrics)
        is_last = step == total_steps
        preempted = watcher.reached(step)
        save = is_last or preempted or step % config.checkpoint_every_steps == 0
        if step % config.log_every_steps == 0 or save:
          summary = _summarise(pending_metrics, step)
          pending_metrics = []
          summary.update(progress.report(step), learning_rate=float(schedule(step - 1)))
          writer.write_scalars(step, summary)
          logging.info("epoch %d  step %d/%d  loss %.4f  top1 %.4f  lr %.5f  %.1f img/s  ETA %s",
                       (step - 1) // steps_per_epoch + 1, step, total_steps, summary["train_loss"],
                       summary["train_top1"], summary["learning_rate"], summary["images_per_sec"],
                       _format_duration(summary["eta_seconds"]))
        if (eval_every and step % eval_every == 0) or is_last:
          eval_metrics = evaluate(state.variables, eval_batches(), p_eval_step)
          writer.write_scalars(step, eval_metrics)
          logging.info("eval at step %d: loss %.4f  top1 %.4f  top5 %.4f  (%d examples)", step,
                       eval_metrics["eval_loss"], eval_metrics["eval_top1"],
                       eval_metrics["eval_top5"], eval_metrics["eval_count"])
        if save:
          checkpointer.save(step, state)
        if preempted:
          logging.warning("Stopped at step %d (%s); checkpoint %s. Run the same command to "
                          "resume.", step, watcher.received or "preemption",
                          checkpointer.path(step))
    profiler.stop(state)
  finally:
    profiler.stop()  # after an error: end the trace without waiting on the (maybe donated) state
    writer.flush()
    checkpointer.close()
  return {"step": step, "preempted": preempted, **eval_metrics}


def _summarise(step_metrics: list[dict], step: int) -> dict:
  """Means of the per-step metrics since the last log point; stops on a non-finite step."""
  values = jax.device_get(step_metrics)
  finite = [bool(m["finite"]) for m in values]
  if not all(finite):
    bad = step - len(values) + finite.index(False) + 1
    raise TrainingError(f"non-finite loss or gradient at step {bad}; the newest checkpoint is "
                        f"from before it. Lower the learning rate or check the input.")
  return {f"train_{k}": float(np.mean([m[k] for m in values]))
          for k in ("loss", "top1", "top5", "grad_norm")}
