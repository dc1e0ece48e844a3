"""Throughput of the jitted training step (and optionally eval forward) of ResNets with none/SE/LCT.

Each variant is the classification task's compiled training step (`train_state.train_step` of
its loss: forward, backward, BatchNorm statistics, the PyTorch-SGD update of `optimization`) on a
config from `configs/base.py`, the state donated. Variants of one dtype are alternated in one
process (A B C A B C ...) so that load from other jobs on the machine hits them alike; the first `--warmup` rounds are not timed;
the table gives the median step time. Compile time is that of the first step, lowering and XLA
compilation timed separately; with `--compile_rounds=K` the variants are also lowered and compiled
again K times, alternated, with JAX's caches cleared before each, and the columns give the median
of the 1 + K times (a single compile on a shared machine varies by 20% or more). Memory is XLA's
per-variant compiled memory analysis (temporaries and arguments), plus the device's peak where it
reports one (GPU; process-wide).

  python -m bench.train_step [--batch=8 --image_size=224 --steps=5 --eval]   (repository root)
"""

import datetime
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from bench import machine
from bench.timing import (  # noqa: F401  (bench.kernel_time uses them from here)
    Variant, compile_timed, device_peak_mib, peak_rss_mib, print_table, time_alternated,
    time_compiles)
from configs import base
from lct_flax.tasks.classification import TASK as CLASSIFICATION

_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Image side in pixels.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per variant.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps per variant after the compile.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes.")
_MODELS = flags.DEFINE_list("models", ["resnet50"], "Model names.")
_ATTENTIONS = flags.DEFINE_list("attentions", ["none", "se", "lct"], "Attention blocks.")
_EVAL = flags.DEFINE_bool("eval", False,
                          "Also time the eval-mode forward (classifier_steps.eval_step).")
_COMPILE_ROUNDS = flags.DEFINE_integer(
    "compile_rounds", 0, "Also lower and compile every variant this many more times, alternated, "
    "and report the median lowering and compile times.")



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


def build_variant(model_name: str, attention: str, dtype: str, batch: dict,
                  eval_mode: bool) -> Variant:
  """Initialises the state and compiles the train step (or the eval step) of one variant."""
  config = make_config(model_name, attention, dtype, len(batch["label"]), batch["image"].shape[1])
  experiment = CLASSIFICATION.build_experiment(config, num_classes=1000, steps_per_epoch=1000)
  state = experiment.init_state()
  if eval_mode:
    step = CLASSIFICATION.compile_eval_step(experiment)
    state = state.variables
  else:
    step = CLASSIFICATION.compile_train_step(experiment)
  compiled, lower_s, compile_s = compile_timed(step, state, batch)
  return Variant(name=f"{model_name} {attention}", dtype=dtype, model=model_name,
                 attention=attention, jitted=step, step=compiled, state=state,
                 lower_times=[lower_s], compile_times=[compile_s],
                 memory=compiled.memory_analysis())


def bench_mode(eval_mode: bool, batch: dict) -> None:
  """Builds, times and prints every dtype's variants; one dtype's states live at a time."""
  kind = ("eval forward (`classifier_steps.eval_step`)" if eval_mode
          else "training step (`train_state.train_step`)")
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
  print(f"Device: {device.device_kind} ({jax.default_backend()}); CPU: {machine.cpu_model()}, "
        f"{os.cpu_count()} cores (os.cpu_count()). jax {jax.__version__}. Command: "
        f"`{' '.join(['python -m bench.train_step', *sys.argv[1:]])}`.")
  bench_mode(False, batch)
  if _EVAL.value:
    bench_mode(True, batch)
  print(f"\nDevice peak memory (process-wide, all variants): {device_peak_mib()}; "
        f"process peak RSS: {peak_rss_mib():.0f} MiB.")


if __name__ == "__main__":
  app.run(main)
