"""Orbax checkpoints of the train state: save every N steps, keep the last k, resume the newest.

Orbax writes each checkpoint into a temporary directory (`<step>.orbax-checkpoint-tmp...`) and
renames it when complete, so a crash mid-write never leaves a half-written checkpoint that looks
finished. A save that cannot fit in the free space is refused before anything is written; one
that fails anyway (disk full, quota...) removes its temporary directory; both raise
`fileio.WriteError` in one line, and the previous checkpoints are untouched. A writing
Checkpointer (`create=True`, only made by the training run, which holds the workdir lock) first
removes the temporary directories that a killed run left. All processes call `save` and `restore`
together (the arrays are global).
"""

from __future__ import annotations

import logging as std_logging
import os
import shutil
import sys
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from lct_flax import fileio


class CheckpointError(RuntimeError):
  """No usable checkpoint could be restored."""


# A checkpoint on disk is the state's bytes plus orbax's metadata: about 8% more for the tiny test
# models, less for real ones.
CHECKPOINT_OVERHEAD = 1.1


class _OrbaxErrors(std_logging.Filter):
  """Holds back orbax's error records (tracebacks from its writer threads)."""

  def __init__(self):
    super().__init__()
    self.records = []

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
      self.records.append(record)
      return False
    return True


class _NeverRetrieved(std_logging.Filter):
  """Drops asyncio's "... exception was never retrieved" records."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return "exception was never retrieved" not in record.getMessage()


class _SaveFailureNoise:
  """While a save runs, holds back what orbax and TensorStore print when it fails: orbax's error
  records, asyncio's "exception was never retrieved" about orbax's abandoned writer tasks (when
  they are garbage-collected, at exit) and "Event loop is closed" from TensorStore callbacks into
  orbax's closed event loop. A failure told as one WriteError line drops them for the rest of the
  process (the run ends); otherwise orbax's records are let through and all is as before."""

  def __enter__(self) -> "_SaveFailureNoise":
    self._absl, self._asyncio = std_logging.getLogger("absl"), std_logging.getLogger("asyncio")
    self._orbax_errors, self._never_retrieved = _OrbaxErrors(), _NeverRetrieved()
    self._absl.addFilter(self._orbax_errors)
    self._asyncio.addFilter(self._never_retrieved)
    self._unraisablehook = sys.unraisablehook
    sys.unraisablehook = self._unraisable
    return self

  def _unraisable(self, unraisable) -> None:
    if str(unraisable.exc_value) != "Event loop is closed":
      self._unraisablehook(unraisable)

  def __exit__(self, exc_type, exc_value, traceback) -> None:
    self._absl.removeFilter(self._orbax_errors)
    if exc_type is not None and issubclass(exc_type, fileio.WriteError):
      return
    self._asyncio.removeFilter(self._never_retrieved)
    sys.unraisablehook = self._unraisablehook
    for record in self._orbax_errors.records:
      self._absl.handle(record)


ROTATION_RETRIES = 5   # a read-only restore re-lists this often when a running run rotates
_ROTATED = object()


class Checkpointer:
  """A thin layer over `ocp.CheckpointManager` for one workdir."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, create: bool = True):
    """`create=False` opens an existing directory for reading and creates nothing."""
    self.directory = os.path.abspath(directory)
    self._read_only = not create
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(f"{self.directory} does not exist: the run has saved no checkpoint "
                            f"yet; train longer or point --workdir at another run.")
    self._options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                                 enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)
    if create:
      for path in self._remove_unfinished():
        logging.warning("Removed %s, an unfinished checkpoint of an interrupted run.", path)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def _where(self, step: int, state: Any) -> dict:
    return dict(what=f"checkpoint {step}", directory=self.directory,
                needed_bytes=CHECKPOINT_OVERHEAD * sum(x.nbytes for x in jax.tree.leaves(state)),
                then="The previous checkpoints are intact: free some space and run the same "
                     "command to resume.")

  def check_room(self, step: int, state: Any) -> None:
    """Refuses (fileio.check_free_space) when checkpoint `step` of `state` would not fit: a run
    checks before its first step, not only when its first checkpoint is due."""
    fileio.check_free_space(**self._where(step, state))

  def save(self, step: int, state: Any) -> None:
    """Writes `state` as checkpoint `step` (skipped if that step is already saved)."""
    if step in self._manager.all_steps():
      return
    where = self._where(step, state)
    fileio.check_free_space(**where)
    with _SaveFailureNoise():
      try:
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()
      except Exception as error:  # pylint: disable=broad-except  # TensorStore wraps OSErrors
        self._remove_unfinished()
        failure = fileio.write_error(error, **where)
        if failure is None:
          raise
        raise failure from error
    logging.info("Saved checkpoint %s", self.path(step))

  def _remove_unfinished(self) -> list[str]:
    """Removes orbax's temporary checkpoint directories (process 0); returns their paths."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return []
    unfinished = [os.path.join(self.directory, name) for name in sorted(os.listdir(self.directory))
                  if ocp.utils.TMP_DIR_SUFFIX in name]
    for path in unfinished:
      shutil.rmtree(path, ignore_errors=True)
    return unfinished

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """Restores checkpoint `step` into the structure and shardings of `abstract_state` (a pytree
    of `jax.ShapeDtypeStruct`s).

    Without `step`, the newest readable checkpoint: one that fails to read (truncated or damaged
    files) is reported, renamed to `<step>.damaged` (kept for inspection, never deleted; left in
    place when opened read-only) and the previous one is tried. One that a running run rotates
    away while it is read is not damaged: the checkpoints are listed again and the newest taken.
    """
    if step is not None:
      if step not in self._manager.all_steps():
        raise CheckpointError(f"no checkpoint {step} in {self.directory}; it has "
                              f"{self.all_steps() or 'none'}.")
      try:
        return self._read(step, abstract_state)
      except Exception:  # pylint: disable=broad-except  # any reader layer
        if not os.path.isdir(self.path(step)):
          raise CheckpointError(self._rotated(step) + " choose a step it keeps, "
                                f"{self._relisted() or 'none'}, or none for the newest.") from None
        raise
    for _ in range(ROTATION_RETRIES):
      state = self._newest_readable(abstract_state)
      if state is not _ROTATED:
        return state
    raise CheckpointError(f"the checkpoints in {self.directory} were rotated away "
                          f"{ROTATION_RETRIES} times while being read; retry.")

  def _newest_readable(self, abstract_state: Any) -> Any:
    """The newest checkpoint that reads (setting damaged ones aside), or _ROTATED when one
    vanished while being read (the steps are then listed again)."""
    for candidate in reversed(self.all_steps()):
      try:
        return self._read(candidate, abstract_state)
      except Exception as error:  # pylint: disable=broad-except  # damage shows in any reader layer
        if not os.path.isdir(self.path(candidate)):
          logging.info("%s taking the newest again.", self._rotated(candidate))
          self._relisted()
          return _ROTATED
        reason = (str(error).splitlines() or [""])[0][:200]
        logging.warning("Checkpoint %s is damaged (%s: %s); using the previous one.",
                        self.path(candidate), type(error).__name__, reason)
        if not self._read_only:
          self._set_aside(candidate)
    raise CheckpointError(f"no readable checkpoint in {self.directory}.")

  def _rotated(self, step: int) -> str:
    return (f"checkpoint {self.path(step)} was removed while being read (the run writing "
            f"{self.directory} keeps only its newest checkpoints);")

  def _relisted(self) -> list[int]:
    """The steps listed again, by a new manager (a failed read leaves orbax's unusable)."""
    self._manager.close()
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)
    return self.all_steps()

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
