"""The training loop every task shares: classification (`trainer`) and detection
(`detection.task`) supply a `Task`; `run(task, workdir)` does the rest.

What every run needs lives here once: the workdir lock and compatibility check, initialisation
from pretrained weights (`config.init_from`, applied only to a workdir without checkpoints),
orbax checkpoints with exact resume (state and data position), SIGTERM/SIGINT stops at a step
boundary with a checkpoint, the NaN guard, TensorBoard scalars, the progress line with img/s and
ETA, periodic evaluation and the profiler window. Steps are compiled functions over a device mesh
with one "data" axis (the batch sharded, the state replicated).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from lct_flax import checkpointing
from lct_flax import fileio
from lct_flax import parallel
from lct_flax import preemption
from lct_flax import pretrained
from lct_flax import profiling
from lct_flax import workdir_lock

# config.json keys the run writes itself (provenance), beside the config.
INIT_RECORD_KEY = "init_from_source"


class TrainingError(RuntimeError):
  """Training cannot go on (non-finite loss, incompatible workdir, bad config)."""


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: the step, the model's variables, the optimizer
  state and the base RNG key (each step folds in its step number)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}

  @classmethod
  def create(cls, variables: dict, optimizer: optax.GradientTransformation,
             rng: jax.Array) -> "TrainState":
    """The state at step 0 of freshly initialised model `variables`."""
    params = variables["params"]
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=variables.get("batch_stats", {}), opt_state=optimizer.init(params),
               rng=rng)


def abstract_state_of(init_state: Callable[[], TrainState], mesh: Any) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the state `init_state()` creates, without
  creating it: what a checkpoint is restored into."""
  replicated = parallel.replicated_sharding(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                      jax.eval_shape(init_state))


@dataclasses.dataclass(frozen=True)
class Task:
  """One kind of training as the loop sees it.

  `identity` (JSON) is written to the workdir's model.json; a workdir holding another identity is
  refused. `train_step(state, batch)` and `init_state()` are compiled over `mesh`;
  `train_batches(start_step)` yields host-local NumPy batches of the fields `train_step` reads,
  from that step of the stream on; `evaluate(state)` returns "eval_*" scalars and
  `describe_eval` their log line. `log_keys` are the train metrics (besides the loss) of the
  progress line. `pretrained_path` is where a ResNet's variables sit in the state (`init_from`
  loads torchvision/timm-layout weights there: () for a classifier, ("backbone",) for a
  detector).
  """
  config: ml_collections.ConfigDict
  mesh: Any
  identity: dict
  steps_per_epoch: int
  total_steps: int
  schedule: optax.Schedule
  init_state: Callable[[], TrainState]
  abstract_state: Callable[[], TrainState]
  train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
  train_batches: Callable[[int], Iterator[dict]]
  evaluate: Callable[[TrainState], dict]
  describe_eval: Callable[[dict], str]
  description: str
  log_keys: tuple = ()
  pretrained_path: tuple = ()


def run(make_task: Callable[[], Task], workdir: str, *, force_unlock: bool = False) -> dict:
  """Trains the task `make_task()` builds in `workdir` to its last step, resuming from the newest
  checkpoint. The workdir's lock is taken first (a second run on a held workdir is refused before
  it builds anything) and held throughout; `force_unlock` takes over one left on another host.
  Returns the last eval metrics with "step" and "preempted"."""
  with workdir_lock.hold(workdir, force=force_unlock, process_index=jax.process_index(),
                         process_count=jax.process_count()):
    return _run(make_task(), workdir)


def _run(task: Task, workdir: str) -> dict:
  from lct_flax import input_pipeline  # TensorFlow: only when training

  config = task.config
  parallel.check_batch_size(config.batch_size, task.mesh)
  data_sharding = parallel.batch_sharding(task.mesh)
  is_writer = jax.process_index() == 0
  check_workdir_compatible(workdir, task.identity)

  init_record = _previous_init_record(workdir)
  pretrained_init = None
  if config.get("init_from") and not _has_checkpoint(workdir):
    pretrained_init = plan_init_from(task)   # refusals before anything is written
  checkpointer = checkpointer_for(workdir, config)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(task.abstract_state())
    logging.info("Resumed from %s", checkpointer.path(checkpointer.latest_step()))
  else:
    state = task.init_state()
    if pretrained_init is not None:
      state, init_record = initialize_from(state, *pretrained_init, task.pretrained_path,
                                           parallel.replicated_sharding(task.mesh))
  start_step = int(state.step)
  if start_step >= task.total_steps:
    logging.info("%s is already at step %d of %d: nothing to train (raise num_train_steps or "
                 "num_epochs to go on); the workdir is left as it was.", workdir, start_step,
                 task.total_steps)
    checkpointer.close()
    return {"step": start_step, "preempted": False}
  every = config.checkpoint_every_steps
  checkpointer.check_room(min(task.total_steps, (start_step // every + 1) * every), state)
  if is_writer:
    fileio.write_json_atomically(os.path.join(workdir, "model.json"), task.identity)
    fileio.write_json_atomically(os.path.join(workdir, "config.json"),
                                 {**json.loads(config.to_json_best_effort()), **init_record})

  batches = input_pipeline.prefetch_to_mesh(task.train_batches(start_step), data_sharding)
  writer = create_metric_writer(workdir, is_writer)
  steps_per_epoch, total_steps = task.steps_per_epoch, task.total_steps
  progress = _Progress(start_step, total_steps, config.batch_size)
  eval_every = config.eval_every_epochs * steps_per_epoch
  pending_metrics = []
  eval_metrics = {}
  logging.info("Training %s for %d steps (%d per epoch) on %d devices, from step %d",
               task.description, total_steps, steps_per_epoch, task.mesh.devices.size,
               start_step)
  profiler = profiling.StepProfiler(workdir, config.profile_start_step, config.profile_num_steps)
  step = start_step
  preempted = False
  try:
    with preemption.PreemptionWatcher() as watcher:
      while step < total_steps and not preempted:
        profiler.step(step, wait_for=state)
        state, metrics = task.train_step(state, next(batches))
        step += 1
        pending_metrics.append(metrics)
        is_last = step == total_steps
        preempted = watcher.reached(step)
        save = is_last or preempted or step % config.checkpoint_every_steps == 0
        if step % config.log_every_steps == 0 or save:
          summary = summarise(pending_metrics, step)
          pending_metrics = []
          summary.update(progress.report(step), learning_rate=float(task.schedule(step - 1)))
          writer.write_scalars(step, summary)
          logging.info("%s", _progress_line(summary, task.log_keys, step, steps_per_epoch,
                                            total_steps))
        if save:
          checkpointer.save(step, state)
        if (eval_every and step % eval_every == 0) or is_last:
          eval_metrics = _evaluate_keeping_state(task, state, step, checkpointer)
          writer.write_scalars(step, eval_metrics)
          logging.info("eval at step %d: %s", step, task.describe_eval(eval_metrics))
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


def _evaluate_keeping_state(task: Task, state: TrainState, step: int,
                            checkpointer: checkpointing.Checkpointer) -> dict:
  """`task.evaluate(state)`; if it fails (a corrupt eval image, say), the training state of `step`
  is checkpointed (unless it already is) before the error is raised: no step is lost to it."""
  try:
    return task.evaluate(state)
  except Exception as error:
    checkpointer.save(step, state)
    detail = (str(error).strip().splitlines() or [""])[0][:300]
    raise TrainingError(
        f"evaluation at step {step} failed ({type(error).__name__}: {detail}); the training "
        f"state is saved as {checkpointer.path(step)}. Fix the evaluation data, then run the "
        f"same command to go on, or export that checkpoint and run lct_flax.evaluate on it."
    ) from error


def _progress_line(summary: dict, log_keys: tuple, step: int, steps_per_epoch: int,
                   total_steps: int) -> str:
  extra = "".join(f"  {key} {summary[f'train_{key}']:.4f}" for key in log_keys)
  return (f"epoch {(step - 1) // steps_per_epoch + 1}  step {step}/{total_steps}  "
          f"loss {summary['train_loss']:.4f}{extra}  lr {summary['learning_rate']:.5f}  "
          f"{summary['images_per_sec']:.1f} img/s  ETA {_format_duration(summary['eta_seconds'])}")


def summarise(step_metrics: list[dict], step: int) -> dict:
  """Means of the per-step metrics since the last log point, as "train_*" scalars; stops on a
  non-finite step (every step's metrics carry `finite`)."""
  values = jax.device_get(step_metrics)
  finite = [bool(m["finite"]) for m in values]
  if not all(finite):
    bad = step - len(values) + finite.index(False) + 1
    raise TrainingError(f"non-finite loss or gradient at step {bad}; the newest checkpoint is "
                        f"from before it. Lower the learning rate or check the input.")
  return {f"train_{k}": float(np.mean([m[k] for m in values]))
          for k in values[0] if k != "finite"}


# ---------------------------------------------------------------------------------------------
# Workdir, checkpoints, logs.


def check_workdir_compatible(workdir: str, identity: dict) -> None:
  """Refuses to resume from a workdir whose run had another model (nothing is overwritten).
  Keys a workdir's model.json lacks (written before they existed) take IDENTITY_DEFAULTS."""
  path = os.path.join(workdir, "model.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = {**IDENTITY_DEFAULTS, **json.load(f)}
  wanted = {**IDENTITY_DEFAULTS, **json.loads(json.dumps(identity))}
  if saved != wanted:
    diffs = ", ".join(f"{k}: {saved.get(k)!r} in the workdir vs {wanted.get(k)!r} now"
                      for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k))
    raise TrainingError(f"workdir {workdir} holds a run of another model ({diffs}); "
                        f"use a new --workdir or the workdir's own config.")


# Values of identity keys that a workdir written before the key existed implies.
IDENTITY_DEFAULTS = {"frozen_stages": -1, "frozen_bn": False, "model.convention": "mmdet_v1"}


def checkpointer_for(workdir: str, config: ml_collections.ConfigDict, *,
                     create: bool = True) -> checkpointing.Checkpointer:
  return checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.get("keep_checkpoints", 3), create=create)


def create_metric_writer(workdir: str, is_writer: bool) -> fileio.ReportingWriter:
  """Progress to the log and (process 0) TensorBoard scalars in `workdir`. Synchronous, so that
  a failed write (disk full) stops the run at once with one line, not a stream of errors from a
  background thread."""
  from clu import metric_writers  # TensorFlow
  then = "The checkpoints are intact: free some space and run the same command to resume."
  with fileio.reporting_write_errors(what="the TensorBoard log", directory=workdir, then=then):
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_writer,
                                                  asynchronous=False)
  return fileio.ReportingWriter(writer, workdir, then)


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


# ---------------------------------------------------------------------------------------------
# Initialisation from pretrained weights.


def _subtree(tree: Any, path: tuple) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _with_subtree(tree: dict, path: tuple, value: Any) -> dict:
  if not path:
    return value
  return {**tree, path[0]: _with_subtree(tree[path[0]], path[1:], value)}


def _pretrained_variables(state: TrainState, path: tuple) -> dict:
  return {"params": _subtree(state.params, path),
          "batch_stats": _subtree(state.batch_stats, path)}


def plan_init_from(task: Task) -> tuple[pretrained.Source, pretrained.LoadPlan]:
  """Reads `config.init_from` and decides what it loads into the task's ResNet (see
  `lct_flax.pretrained`); raises ValueError naming whatever does not fit."""
  config = task.config
  source = pretrained.read_source(config.init_from)
  target = traverse_util.flatten_dict(_pretrained_variables(task.abstract_state(),
                                                            task.pretrained_path))
  return source, pretrained.plan_load(target, source.state_dict,
                                      tuple(config.get("init_skip", ())))


def initialize_from(state: TrainState, source: pretrained.Source, plan: pretrained.LoadPlan,
                    path: tuple, sharding: Any) -> tuple[TrainState, dict]:
  """`state` with the planned variables loaded at `path`, and the record config.json keeps of
  the source. Logs the table of what was loaded."""
  logging.info("%s", pretrained.describe(source, plan))
  host = jax.device_get(_pretrained_variables(state, path))
  loaded = jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]),
      pretrained.apply_plan(host, plan))
  record = {INIT_RECORD_KEY: {"path": source.path, "kind": source.kind, "sha256": source.sha256,
                              "loaded": len(plan.arrays), "initialised_fresh": plan.fresh,
                              "skipped": plan.skipped}}
  return state.replace(
      params=_with_subtree(state.params, path, loaded["params"]),
      batch_stats=_with_subtree(state.batch_stats, path, loaded["batch_stats"])), record


def _has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a checkpoint (looked up without creating anything)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return False
  checkpointer = checkpointing.Checkpointer(directory, create=False)
  try:
    return checkpointer.latest_step() is not None
  finally:
    checkpointer.close()


def _previous_init_record(workdir: str) -> dict:
  """The init_from record of the run already in `workdir` (kept when it resumes)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    saved = json.load(f)
  return {INIT_RECORD_KEY: saved[INIT_RECORD_KEY]} if INIT_RECORD_KEY in saved else {}

