"""The training loop every task shares: a task (`lct_flax.tasks`) builds a `Training`;
`run(make_training, workdir)` does the rest.

What every run needs lives here once: the workdir lock and compatibility check, orbax checkpoints
with exact resume (state and data position), SIGTERM/SIGINT stops at a step boundary with a
checkpoint, the NaN guard, TensorBoard scalars, the progress line with img/s and ETA, periodic
evaluation and the profiler window. Steps are compiled functions over a device mesh with one
"data" axis (the batch sharded, the state replicated). How the first state is made (fine-tuning
from pretrained weights, `lct_flax.finetuning`) is the task's, supplied as `initialize`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator, Optional

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from lct_flax import checkpointing
from lct_flax import fileio
from lct_flax import parallel
from lct_flax import preemption
from lct_flax import profiling
from lct_flax import step_memory
from lct_flax import workdir_lock
from lct_flax.train_state import TrainState


class TrainingError(RuntimeError):
  """Training cannot go on (non-finite loss, incompatible workdir, bad config)."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The loop's own settings, read once from the config."""
  batch_size: int
  checkpoint_every_steps: int
  keep_checkpoints: int
  log_every_steps: int
  eval_every_epochs: int
  profile_start_step: int
  profile_num_steps: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Settings":
    return cls(batch_size=config.batch_size,
               checkpoint_every_steps=config.checkpoint_every_steps,
               keep_checkpoints=config.get("keep_checkpoints", 3),
               log_every_steps=config.log_every_steps, eval_every_epochs=config.eval_every_epochs,
               profile_start_step=config.profile_start_step,
               profile_num_steps=config.profile_num_steps)


@dataclasses.dataclass(frozen=True)
class Training:
  """One run as the loop sees it; a task builds it (`Task.training`).

  `identity` (JSON) is written to the workdir's model.json; a workdir holding another identity is
  refused (keys an older model.json lacks take `identity_defaults`). `train_step(state, batch)`
  and `init_state()` are compiled over `mesh`; `train_batches(start_step, stop_step)` yields
  host-local NumPy batches of the fields `train_step` reads, those steps of the stream;
  `evaluate(state)` returns "eval_*" scalars and `describe_eval` their log line. `log_keys` are
  the train metrics (besides the loss) of the progress line. `initialize(state)`, when given,
  turns the fresh state of a new run into its first one and returns the record config.json
  keeps of it; `record` is the one of the run already in the workdir.
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
  train_batches: Callable[[int, int], Iterator[dict]]
  evaluate: Callable[[TrainState], dict]
  describe_eval: Callable[[dict], str]
  description: str
  log_keys: tuple = ()
  identity_defaults: dict = dataclasses.field(default_factory=dict)
  initialize: Optional[Callable[[TrainState], tuple[TrainState, dict]]] = None
  record: dict = dataclasses.field(default_factory=dict)


def run(make_training: Callable[[], Training], workdir: str, *,
        force_unlock: bool = False) -> dict:
  """Trains what `make_training()` builds in `workdir` to its last step, resuming from the newest
  checkpoint. The workdir's lock is taken first (a second run on a held workdir is refused before
  it builds anything) and held throughout; `force_unlock` takes over one left on another host.
  Returns the last eval metrics with "step" and "preempted"."""
  with workdir_lock.hold(workdir, force=force_unlock, process_index=jax.process_index(),
                         process_count=jax.process_count()):
    return _run(make_training(), workdir)


def _run(training: Training, workdir: str) -> dict:
  settings = Settings.from_config(training.config)
  parallel.check_batch_size(settings.batch_size, training.mesh)
  check_workdir_compatible(workdir, training.identity, training.identity_defaults)
  checkpointer = checkpointer_for(workdir, max_to_keep=settings.keep_checkpoints)
  state, record = _first_state(training, checkpointer)
  start_step = int(state.step)
  if start_step >= training.total_steps:
    logging.info("%s is already at step %d of %d: nothing to train (raise num_train_steps or "
                 "num_epochs to go on); the workdir is left as it was.", workdir, start_step,
                 training.total_steps)
    checkpointer.close()
    return {"step": start_step, "preempted": False}
  every = settings.checkpoint_every_steps
  checkpointer.check_room(min(training.total_steps, (start_step // every + 1) * every), state)
  if jax.process_index() == 0:
    fileio.write_json_atomically(os.path.join(workdir, "model.json"), training.identity)
    fileio.write_json_atomically(
        os.path.join(workdir, "config.json"),
        {**json.loads(training.config.to_json_best_effort()), **record})
  devices = training.mesh.devices.size
  logging.info("Training %s for %d steps (%d per epoch) on %d device%s, from step %d",
               training.description, training.total_steps, training.steps_per_epoch, devices,
               "" if devices == 1 else "s", start_step)
  return _train(training, settings, state, workdir, checkpointer)


def _first_state(training: Training,
                 checkpointer: checkpointing.Checkpointer) -> tuple[TrainState, dict]:
  """The newest checkpoint's state, or the fresh (and `initialize`d) one; with the init record
  config.json keeps."""
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(training.abstract_state())
    logging.info("Resumed from %s", checkpointer.path(checkpointer.latest_step()))
    return state, training.record
  state = training.init_state()
  if training.initialize is None:
    return state, training.record
  return training.initialize(state)


def _train(training: Training, settings: Settings, state: TrainState, workdir: str,
           checkpointer: checkpointing.Checkpointer) -> dict:
  """Steps from `state` to the last step: logs, checkpoints, evaluations, preemption stops."""
  from lct_flax import input_pipeline, tensorboard_log  # TensorFlow: only when training

  step = start_step = int(state.step)
  total_steps, steps_per_epoch = training.total_steps, training.steps_per_epoch
  batches = input_pipeline.prefetch_to_mesh(training.train_batches(start_step, total_steps),
                                            parallel.batch_sharding(training.mesh))
  writer = tensorboard_log.ScalarLog(workdir, is_writer=jax.process_index() == 0)
  progress = _Progress(start_step, total_steps, settings.batch_size)
  eval_every = settings.eval_every_epochs * steps_per_epoch
  pending_metrics, eval_metrics, preempted = [], {}, False
  profiler = profiling.StepProfiler(workdir, settings.profile_start_step,
                                    settings.profile_num_steps)
  try:
    with preemption.PreemptionWatcher() as watcher:
      while step < total_steps and not preempted:
        profiler.step(step, wait_for=state)
        batch = next(batches)
        if step == start_step:
          step_memory.log_train_step_memory(training.train_step, state, batch)
        state, metrics = training.train_step(state, batch)
        step += 1
        pending_metrics.append(metrics)
        is_last = step == total_steps
        preempted = watcher.reached(step)
        save = is_last or preempted or step % settings.checkpoint_every_steps == 0
        if step % settings.log_every_steps == 0 or save:
          summary = summarise(pending_metrics, step)
          pending_metrics = []
          summary.update(progress.report(step), learning_rate=float(training.schedule(step - 1)))
          writer.write_scalars(step, summary)
          logging.info("%s", _progress_line(summary, training.log_keys, step, steps_per_epoch,
                                            total_steps))
        if save:
          checkpointer.save(step, state)
        if (eval_every and step % eval_every == 0) or is_last:
          eval_metrics = _evaluate_keeping_state(training, state, step, checkpointer)
          writer.write_scalars(step, eval_metrics)
          logging.info("eval at step %d: %s", step, training.describe_eval(eval_metrics))
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


def _evaluate_keeping_state(training: Training, state: TrainState, step: int,
                            checkpointer: checkpointing.Checkpointer) -> dict:
  """`training.evaluate(state)`; if it fails (a corrupt eval image, say), the training state of
  `step` is checkpointed (unless it already is) before the error is raised: no step is lost."""
  try:
    return training.evaluate(state)
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


def check_workdir_compatible(workdir: str, identity: dict, defaults: dict) -> None:
  """Refuses to resume from a workdir whose run had another model (nothing is overwritten).
  Keys a workdir's model.json lacks (written before they existed) take `defaults`."""
  path = os.path.join(workdir, "model.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = {**defaults, **json.load(f)}
  wanted = {**defaults, **json.loads(json.dumps(identity))}
  if saved != wanted:
    diffs = ", ".join(f"{k}: {saved.get(k)!r} in the workdir vs {wanted.get(k)!r} now"
                      for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k))
    raise TrainingError(f"workdir {workdir} holds a run of another model ({diffs}); "
                        f"use a new --workdir or the workdir's own config.")


def checkpointer_for(workdir: str, *, max_to_keep: int = 3,
                     create: bool = True) -> checkpointing.Checkpointer:
  """The checkpoints of the run in `workdir` (read-only use: `create=False`)."""
  return checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=max_to_keep, create=create)


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
