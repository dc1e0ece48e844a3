"""StepProfiler writes a trace for exactly the chosen window of steps."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from lct_flax import profiling


def _run(profiler: profiling.StepProfiler, num_steps: int) -> jax.Array:
  step_fn = jax.jit(lambda x: jnp.tanh(x @ x.T) + 1.0)
  x = jnp.ones((16, 16))
  try:
    for step in range(num_steps):
      profiler.step(step, wait_for=x)
      x = step_fn(x)
  finally:
    profiler.stop(wait_for=x)
  return x


def test_trace_written_for_window(tmp_path):
  profiler = profiling.StepProfiler(str(tmp_path), start=1, num_steps=2,
                                    create_perfetto_trace=True)
  _run(profiler, num_steps=5)
  assert not profiler.active
  runs = glob.glob(os.path.join(tmp_path, "plugins", "profile", "*"))
  assert len(runs) == 1, runs
  files = os.listdir(runs[0])
  assert any(f.endswith(".xplane.pb") for f in files), files
  assert any(f.endswith(".trace.json.gz") for f in files), files


def test_disabled_writes_nothing(tmp_path):
  _run(profiling.StepProfiler(str(tmp_path), start=-1), num_steps=3)
  assert not os.listdir(tmp_path)


def test_window_past_end_is_closed_by_stop(tmp_path):
  profiler = profiling.StepProfiler(str(tmp_path), start=1, num_steps=10)
  _run(profiler, num_steps=3)
  assert glob.glob(os.path.join(tmp_path, "plugins", "profile", "*", "*.xplane.pb"))


def test_rejects_empty_window(tmp_path):
  with pytest.raises(ValueError, match="at least 1"):
    profiling.StepProfiler(str(tmp_path), start=0, num_steps=0)
