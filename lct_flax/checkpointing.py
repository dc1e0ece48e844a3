"""Orbax checkpoints of the train state: save every N steps, keep the last k, resume the newest.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a crash
mid-write never leaves a half-written checkpoint that looks finished. All processes call `save`
and `restore` together (the arrays are global).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
  """No usable checkpoint could be restored."""


class Checkpointer:
  """A thin layer over `ocp.CheckpointManager` for one workdir."""

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Writes `state` as checkpoint `step` (skipped if that step is already saved)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()
    logging.info("Saved checkpoint %s", self.path(step))

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """Restores checkpoint `step` (default: the newest) into the structure and shardings of
    `abstract_state` (a pytree of `jax.ShapeDtypeStruct`s)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
