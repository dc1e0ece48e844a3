"""The device memory a compiled step needs, and the line train.py logs about it at the start of a
run on a GPU or TPU.

A compiled program's peak is its arguments + outputs - the outputs aliased to donated arguments
+ its temporaries + its code (XLA's memory analysis): what the runtime allocates to run it. The
train step is compiled ahead of its first call for the line, and that call then runs the same
executable (jit keeps it), so the line costs no second compile. CPUs report no device memory, so
nothing is logged there.
"""

from __future__ import annotations

from typing import Any, Optional

from absl import logging
import jax

GiB = 2**30


def peak_bytes(memory: Any) -> int:
  """The peak of a compiled program from its `memory_analysis()`."""
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes
          + memory.generated_code_size_in_bytes)


def device_bytes(device: Any) -> Optional[int]:
  """What the runtime lets `device` allocate (`bytes_limit`: on GPUs JAX's preallocated
  fraction), or None where the device does not say (CPUs)."""
  stats = device.memory_stats()
  return stats.get("bytes_limit") if stats else None


def describe(peak: int, limit: int) -> str:
  line = (f"the train step needs {peak / GiB:.2f} GiB per device (compiled peak) of the "
          f"{limit / GiB:.2f} GiB the device offers ({peak / limit:.0%})")
  if peak > limit:
    line += ("; it will not fit: lower --config.batch_size (`python -m lct_flax.plan` finds "
             "the largest that fits)")
  return line


def log_train_step_memory(train_step: Any, *args: Any) -> None:
  """Logs `describe` for the jitted `train_step` on `args`, where the device reports a limit."""
  limit = device_bytes(jax.local_devices()[0])
  if limit is None:
    return
  peak = peak_bytes(train_step.lower(*args).compile().memory_analysis())
  (logging.warning if peak > limit else logging.info)("%s", describe(peak, limit))
