"""The environment of the processes the tests start (train.py, plan, workers): the test process's
own, with XLA_FLAGS reset to the suite's compile flags and, where given, a host device count (a
device count set for the test process itself must not reach them)."""

import os
from typing import Optional

# The suite's programs are tiny, so compiling them for the CPU is mostly LLVM optimising the code
# that XLA generates; with that off, a tiny detector's train step compiles in 11.5 s instead of 16
# (jax 0.12), while a tiny classifier trains 2.6x slower. Over the whole suite the two balance:
# levels 0 and 1 took 19:01 and 19:09 here. Floats may then round differently (fused
# multiply-adds, vector widths), as on another CPU: no test may rely on that rounding anyway. Each
# process runs XLA's CPU library calls (convolutions, matrix products) on one thread: the two
# workers and the processes they start already keep the cores busy, and threads spread over busy
# cores only contend (the suite 15:27 -> 14:03 here).
COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_multi_thread_eigen=false"


def xla_flags(devices: Optional[int] = None) -> str:
  return COMPILE_FLAGS + (f" --xla_force_host_platform_device_count={devices}" if devices else "")


def child_environment(devices: Optional[int] = None, **extra) -> dict:
  return {**os.environ, "XLA_FLAGS": xla_flags(devices), **extra}
