"""Throughput of the jitted training step (and optionally eval forward) of ResNets with none/SE/LCT.

Each variant is the real `trainer.train_step` (forward, backward, BatchNorm statistics, the
PyTorch-SGD update from `trainer.create_optimizer`) on a config from `configs/base.py`, jitted with
the state donated. Variants of one dtype are alternated in one process (A B C A B C ...) so that
load from other jobs on the machine hits them alike; the first `--warmup` rounds are not timed;
the table gives the median step time. Compile time is that of the first step, lowering and XLA
compilation timed separately; with `--compile_rounds=K` the variants are also lowered and compiled
again K times, alternated, with JAX's caches cleared before each, and the columns give the median
of the 1 + K times (a single compile on a shared machine varies by 20% or more). Memory is XLA's
per-variant compiled memory analysis (temporaries and arguments), plus the device's peak where it
reports one (GPU; process-wide).

  python -m bench.train_step [--batch=8 --image_size=224 --steps=5 --eval]   (repository root)
"""

import dataclasses
import datetime
import functools
import os
import resource
import statistics
import sys
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from lct_flax import trainer

_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Image side in pixels.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per variant.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps per variant after the compile.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes.")
_MODELS = flags.DEFINE_list("models", ["resnet50"], "Model names.")
_ATTENTIONS = flags.DEFINE_list("attentions", ["none", "se", "lct"], "Attention blocks.")
_EVAL = flags.DEFINE_bool("eval", False, "Also time the eval-mode forward (trainer.eval_step).")
_COMPILE_ROUNDS = flags.DEFINE_integer(
    "compile_rounds", 0, "Also lower and compile every variant this many more times, alternated, "
    "and report the median lowering and compile times.")

MiB = 2**20


@dataclasses.dataclass
class Variant:
  """One compiled step of one model, with its timings."""
  name: str
  dtype: str
  model: str
  attention: str
  jitted: Callable          # the jitted step, lowered and compiled again for compile timings
  step: Callable            # compiled; (state, batch) -> state (train) or (variables, batch) -> sums
  state: object             # donated to the train step and replaced after each call
  lower_times: list         # seconds; the first step's, then one per compile round
  compile_times: list
  memory: object            # jax CompiledMemoryStats
  times: list = dataclasses.field(default_factory=list)
  cpu_times: list = dataclasses.field(default_factory=list)


def make_config(model: str, attention: str, dtype: str, batch: int, image_size: int):
  config = base.imagenet_config(model, attention)
  config.half_precision = dtype == "bfloat16"
  config.batch_size = batch
  config.dataset.image_size = image_size
  return config


def make_batch(batch: int, image_size: int, num_classes: int = 1000) -> dict:
  """Random images and labels (the step's cost does not depend on the values), all examples real."""
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.normal(size=(batch, image_size, image_size, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, num_classes, size=batch), jnp.int32),
          "mask": jnp.ones((batch,), jnp.bool_)}


def compile_timed(fn, *args):
  """(compiled, lower seconds, compile seconds) of the jitted `fn` at `args`."""
  start = time.perf_counter()
  lowered = fn.lower(*args)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lower_s, time.perf_counter() - start


def build_variant(model_name: str, attention: str, dtype: str, batch: dict,
                  eval_mode: bool) -> Variant:
  """Initialises the state and compiles the train step (or the eval step) of one variant."""
  config = make_config(model_name, attention, dtype, len(batch["label"]), batch["image"].shape[1])
  model = trainer.create_model(config, num_classes=1000)
  optimizer = trainer.create_optimizer(
      config, trainer.create_learning_rate_schedule(config, steps_per_epoch=1000))
  image_shape = (config.dataset.image_size,) * 2 + (3,)
  state = jax.jit(functools.partial(trainer.init_state, model, optimizer, config.seed,
                                    image_shape))()
  if eval_mode:
    step = jax.jit(functools.partial(trainer.eval_step, model=model))
    state = state.variables
  else:
    step = jax.jit(functools.partial(trainer.train_step, model=model, optimizer=optimizer,
                                     label_smoothing=config.label_smoothing), donate_argnums=(0,))
  compiled, lower_s, compile_s = compile_timed(step, state, batch)
  return Variant(name=f"{model_name} {attention}", dtype=dtype, model=model_name,
                 attention=attention, jitted=step, step=compiled, state=state,
                 lower_times=[lower_s], compile_times=[compile_s],
                 memory=compiled.memory_analysis())


def run_once(variant: Variant, batch: dict) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) for one step, waited for; a train step's output state
  becomes the next input. CPU seconds count the work of every thread of this process and not the
  time it waited for the cores, so on a shared machine they vary less than wall seconds."""
  start, cpu_start = time.perf_counter(), time.process_time()
  if isinstance(variant.state, trainer.TrainState):
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


def cpu_model() -> str:
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return "unknown"


def bench_mode(eval_mode: bool, batch: dict) -> None:
  """Builds, times and prints every dtype's variants; one dtype's states live at a time."""
  kind = "eval forward (`trainer.eval_step`)" if eval_mode else "training step (`trainer.train_step`)"
  for dtype in _DTYPES.value:
    variants = [build_variant(m, a, dtype, batch, eval_mode)
                for m in _MODELS.value for a in _ATTENTIONS.value]
    load = os.getloadavg()[0]
    time_alternated(variants, batch, _WARMUP.value, _STEPS.value)
    time_compiles(variants, batch, _COMPILE_ROUNDS.value)
    print_table(f"{kind}, {dtype}, batch {_BATCH.value}, {_IMAGE_SIZE.value} px, "
                f"{_STEPS.value} timed steps per variant after {_WARMUP.value} warm-up, "
                f"compile times the median of {1 + _COMPILE_ROUNDS.value}, "
                f"load average {load:.1f} at the start:", variants, _BATCH.value)
    del variants


def main(argv):
  del argv
  batch = make_batch(_BATCH.value, _IMAGE_SIZE.value)
  device = jax.devices()[0]
  print(f"\n## Training step, {datetime.date.today().isoformat()}\n")
  print(f"Device: {device.device_kind} ({jax.default_backend()}); CPU: {cpu_model()}, "
        f"{os.cpu_count()} cores (os.cpu_count()). jax {jax.__version__}. Command: "
        f"`{' '.join(['python -m bench.train_step', *sys.argv[1:]])}`.")
  bench_mode(False, batch)
  if _EVAL.value:
    bench_mode(True, batch)
  print(f"\nDevice peak memory (process-wide, all variants): {device_peak_mib()}; "
        f"process peak RSS: {peak_rss_mib():.0f} MiB.")


if __name__ == "__main__":
  app.run(main)
