"""Stopping cleanly when the job is preempted or interrupted.

SIGTERM (what schedulers send before preempting) or SIGINT (Ctrl-C) asks the loop to finish the
current step, write a checkpoint and return normally. With several processes all of them must stop
at the same step: JAX's preemption service (started by `jax.distributed.initialize`, which also
catches SIGTERM) agrees on that step through the coordination service, so here the loop asks
`multihost_utils.reached_preemption_sync_point` every step. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatcher:
  """Context manager; `reached(step)` is True at the step at which the run should stop."""

  def __init__(self):
    self._multi_process = jax.process_count() > 1
    self._previous = {}
    self.received = None

  def __enter__(self) -> "PreemptionWatcher":
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    name = signal.Signals(signum).name
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = name
    logging.warning("%s received: finishing this step and writing a checkpoint "
                    "(press Ctrl-C again to stop at once).", name)

  def reached(self, step: int) -> bool:
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None
