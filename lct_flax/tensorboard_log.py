"""The run's scalars (training summaries, evaluation metrics) as TensorBoard event files in the
workdir, written by process 0 through TensorFlow's own summary writer. Writes happen at once,
not on a background thread, so that a file-system failure (a full disk) stops the run with one
`fileio.WriteError` line instead of a stream of errors; the checkpoints are then intact."""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf

from lct_flax import fileio

_THEN = "The checkpoints are intact: free some space and run the same command to resume."


class ScalarLog:
  """`write_scalars(step, {tag: number})` and `flush()`; a process that is not the writer
  (`is_writer` False: processes other than 0) writes nothing."""

  def __init__(self, workdir: str, is_writer: bool):
    self._workdir, self._writer = workdir, None
    if is_writer:
      with self._reporting():
        self._writer = tf.summary.create_file_writer(workdir)

  def _reporting(self):
    return fileio.reporting_write_errors(what="the TensorBoard log", directory=self._workdir,
                                         then=_THEN)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    with self._reporting(), self._writer.as_default():
      for tag, value in scalars.items():
        tf.summary.scalar(tag, value, step=step)

  def flush(self) -> None:
    if self._writer is not None:
      with self._reporting():
        self._writer.flush()
