"""Timing helpers shared by the step benchmarks: a compiled variant, its compile timed (lowering
and XLA compilation apart), steps alternated between variants (A B C A B C ...), the table."""

import dataclasses
import resource
import statistics
import time
from typing import Callable

import jax

from lct_flax import loop

MiB = 2**20


@dataclasses.dataclass
class Variant:
  """One compiled step of one model, with its timings."""
  name: str
  dtype: str
  model: str
  attention: str
  jitted: Callable          # the jitted step, lowered and compiled again for compile timings
  step: Callable            # compiled: (state, batch) -> state, or (variables, batch) -> sums
  state: object             # donated to the train step and replaced after each call
  lower_times: list         # seconds; the first step's, then one per compile round
  compile_times: list
  memory: object            # jax CompiledMemoryStats
  times: list = dataclasses.field(default_factory=list)
  cpu_times: list = dataclasses.field(default_factory=list)


def compile_timed(fn, *args):
  """(compiled, lower seconds, compile seconds) of the jitted `fn` at `args`."""
  start = time.perf_counter()
  lowered = fn.lower(*args)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lower_s, time.perf_counter() - start


def run_once(variant: Variant, batch: dict) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) for one step, waited for; a train step's output state
  becomes the next input. CPU seconds count the work of every thread of this process and not the
  time it waited for the cores, so on a shared machine they vary less than wall seconds."""
  start, cpu_start = time.perf_counter(), time.process_time()
  if isinstance(variant.state, loop.TrainState):
    variant.state, metrics = variant.step(variant.state, batch)
  else:
    metrics = variant.step(variant.state, batch)
  jax.block_until_ready((variant.state, metrics))
  return time.perf_counter() - start, time.process_time() - cpu_start


def time_alternated(variants: list[Variant], batch: dict, warmup: int, steps: int) -> None:
  """Runs the variants in turn (A B C A B C ...), keeping the times after `warmup` rounds."""
  for round_index in range(warmup + steps):
    for variant in variants:
      elapsed, cpu = run_once(variant, batch)
      if round_index >= warmup:
        variant.times.append(elapsed)
        variant.cpu_times.append(cpu)


def time_compiles(variants: list[Variant], batch: dict, rounds: int) -> None:
  """Lowers and compiles the variants again, in turn, `rounds` times; JAX's in-memory caches are
  cleared before each, so every round compiles from scratch."""
  for _ in range(rounds):
    for variant in variants:
      jax.clear_caches()
      _, lower_s, compile_s = compile_timed(variant.jitted, variant.state, batch)
      variant.lower_times.append(lower_s)
      variant.compile_times.append(compile_s)


def device_peak_mib() -> str:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" not in stats:
    return "not reported"
  return f"{stats['peak_bytes_in_use'] / MiB:.0f} MiB"


def print_table(title: str, variants: list[Variant], batch_size: int) -> None:
  """Markdown table; ratios are to the plain model (attention "none") of the same dtype and model,
  of the median wall time and of the median process CPU time per step, and of the median compile
  time."""
  print(f"\n{title}\n")
  print("| dtype | model | attention | images/s | step ms (median) | min-max ms | vs plain "
        "| CPU ms (median) | CPU vs plain | lower s | compile s | compile vs plain | XLA temp MiB "
        "| XLA args MiB |")
  print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for v in variants:
    median, cpu = statistics.median(v.times), statistics.median(v.cpu_times)
    plain = next((p for p in variants if p.dtype == v.dtype and p.model == v.model
                  and p.attention == "none"), None)
    ratio, cpu_ratio, compile_ratio = (
        f"{statistics.median(getattr(v, field)) / statistics.median(getattr(plain, field)):.3f}"
        if plain else "-" for field in ("times", "cpu_times", "compile_times"))
    print(f"| {v.dtype} | {v.model} | {v.attention} | {batch_size / median:.2f} "
          f"| {1000 * median:.0f} | {1000 * min(v.times):.0f}-{1000 * max(v.times):.0f} "
          f"| {ratio} | {1000 * cpu:.0f} | {cpu_ratio} | {statistics.median(v.lower_times):.1f} "
          f"| {statistics.median(v.compile_times):.1f} | {compile_ratio} "
          f"| {v.memory.temp_size_in_bytes / MiB:.0f} "
          f"| {v.memory.argument_size_in_bytes / MiB:.0f} |")


def peak_rss_mib() -> float:
  """Peak resident memory of this process (Linux reports KiB), over every variant run so far."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
