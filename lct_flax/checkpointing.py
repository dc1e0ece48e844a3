"""Orbax checkpoints of the train state: save every N steps, keep the last k, resume the newest.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a crash
mid-write never leaves a half-written checkpoint that looks finished. All processes call `save`
and `restore` together (the arrays are global).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
  """No usable checkpoint could be restored."""


class Checkpointer:
  """A thin layer over `ocp.CheckpointManager` for one workdir."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, create: bool = True):
    """`create=False` opens an existing directory for reading and creates nothing."""
    self.directory = os.path.abspath(directory)
    self._read_only = not create
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(f"{self.directory} does not exist: the run has saved no checkpoint "
                            f"yet; train longer or point --workdir at another run.")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
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
    """Restores checkpoint `step` into the structure and shardings of `abstract_state` (a pytree
    of `jax.ShapeDtypeStruct`s).

    Without `step`, the newest readable checkpoint: one that fails to read (truncated or damaged
    files) is reported, renamed to `<step>.damaged` (kept for inspection, never deleted; left in
    place when opened read-only) and the previous one is tried.
    """
    if step is not None:
      if step not in self._manager.all_steps():
        raise CheckpointError(f"no checkpoint {step} in {self.directory}; it has "
                              f"{self.all_steps() or 'none'}.")
      return self._read(step, abstract_state)
    for candidate in reversed(self.all_steps()):
      try:
        return self._read(candidate, abstract_state)
      except Exception as error:  # pylint: disable=broad-except  # damage shows in any reader layer
        reason = (str(error).splitlines() or [""])[0][:200]
        logging.warning("Checkpoint %s is damaged (%s: %s); using the previous one.",
                        self.path(candidate), type(error).__name__, reason)
        if not self._read_only:
          self._set_aside(candidate)
    raise CheckpointError(f"no readable checkpoint in {self.directory}.")

  def _read(self, step: int, abstract_state: Any) -> Any:
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def _damaged_path(self, step: int) -> str:
    return f"{self.path(step)}.damaged"

  def _set_aside(self, step: int) -> None:
    """Renames a damaged checkpoint out of orbax's view (process 0 only), then re-lists."""
    if jax.process_index() == 0:
      target = self._damaged_path(step)
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = f"{self._damaged_path(step)}.{suffix}"
      os.rename(self.path(step), target)
      logging.warning("Moved the damaged checkpoint to %s.", target)
    multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    self._manager.reload()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
