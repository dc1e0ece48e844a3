"""JAX profiler traces of a window of training steps, for TensorBoard's profile plugin or Perfetto.

The trainer's loop calls `StepProfiler.step(step)` before running step `step`; the trace covers
steps [start, start + num_steps) and lands in `<log_dir>/plugins/profile/<run>/` as
`*.xplane.pb` (plus `*.trace.json.gz` with `create_perfetto_trace=True`). `start < 0` disables it.
"""

from __future__ import annotations

import jax


class StepProfiler:
  """Starts a `jax.profiler` trace before step `start` and stops it once `num_steps` steps ran."""

  def __init__(self, log_dir: str, start: int, num_steps: int = 5, *,
               create_perfetto_trace: bool = False):
    if start >= 0 and num_steps < 1:
      raise ValueError(f"profile_num_steps must be at least 1, got {num_steps}.")
    self.log_dir, self.start, self.stop_at = log_dir, start, start + num_steps
    self.create_perfetto_trace = create_perfetto_trace
    self.active = False

  def step(self, step: int, wait_for=None) -> None:
    """Call before running step `step` (0-based); `wait_for` (e.g. the last state) is waited for
    before the trace stops, so that the traced steps' device work is inside the trace."""
    if self.start < 0:
      return
    if not self.active and self.start <= step < self.stop_at:
      jax.profiler.start_trace(self.log_dir, create_perfetto_trace=self.create_perfetto_trace)
      self.active = True
    elif self.active and step >= self.stop_at:
      self.stop(wait_for)

  def stop(self, wait_for=None) -> None:
    """Ends the trace if one is running (call at the end of the loop too, e.g. in `finally`)."""
    if self.active:
      jax.block_until_ready(wait_for)
      jax.profiler.stop_trace()
      self.active = False
