"""Where a training step's time goes, kernel by kernel, for ResNets with none/SE/LCT.

Each variant is the compiled training step that `bench.train_step` builds. The variants run
in turn (A B C A B C ...) under one JAX profiler trace (Perfetto), so that load from other jobs
hits them alike; the traced duration of every XLA kernel (an op of the compiled entry computation)
is summed into the part of the model that the op's HLO metadata names:

* attention: the gate (`.../lct.gate/...`, `.../se.gate/...`) and its pooling (`.../pool/...`),
  forward and backward;
* batchnorm: the rest of the BatchNorm layers (`.../bnN/...`, `.../downsample_bn/...`);
* other model ops: convolutions, ReLU, residual adds, the head, the loss;
* no model op: kernels XLA made without a model op name (layout copies and weight-gradient
  convolutions) and the optimizer update and gradient norm.

On a shared machine the wall time of a whole step varies by several percent from run to run, as
much as an attention block costs; here the attention's own kernels are measured directly, and the
kernels that both networks share show how much the same work varies.

  python -m bench.kernel_time [--batch=8 --image_size=224 --steps=5 --warmup=1
                               --dtypes=float32 --models=resnet50]   (repository root)
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

from absl import app
from absl import flags
import jax

from bench import train_step as train_step_bench

FLAGS = flags.FLAGS  # bench.train_step's: --batch --image_size --steps --warmup --dtypes
                     # --models --attentions

PARTS = ("attention", "batchnorm", "other model ops", "no model op")
# An entry-computation instruction, `  [ROOT ]%name = shape opcode(...)`, and its op name.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def model_part(op_name: str) -> str:
  """The part of the model (one of PARTS) that an HLO op name belongs to."""
  if "ResNet" not in op_name:
    return "no model op"
  if ".gate/" in op_name or "/pool/" in op_name:
    return "attention"
  if re.search(r"/(bn\d|downsample_bn)/", op_name):
    return "batchnorm"
  return "other model ops"


def kernel_parts(hlo_text: str) -> dict:
  """Instruction name -> model part, for every instruction of the ENTRY computation."""
  lines = hlo_text.split("\n")
  start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
  parts = {}
  for line in lines[start + 1:]:
    match = _INSTRUCTION.match(line)
    if match:
      op_name = _OP_NAME.search(line)
      parts[match.group(1)] = model_part(op_name.group(1) if op_name else "")
  return parts


def traced_kernel_ms(trace_dir: str, variant_parts: list[dict], steps: int) -> list:
  """(milliseconds per step, kernels per step) of each model part for each variant, from a
  Perfetto trace of `steps` rounds of the variants run in turn: the i-th execution in the trace
  (by start time) is one of variant i % len(variant_parts)."""
  path, = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  runs = collections.defaultdict(list)
  for event in events:
    if event.get("ph") == "X" and "run_id" in event.get("args", {}):
      runs[event["args"]["run_id"]].append(event)
  ordered = sorted(runs.values(), key=lambda run: min(e["ts"] for e in run))
  if len(ordered) != steps * len(variant_parts):
    raise RuntimeError(f"the trace holds {len(ordered)} executions, expected "
                       f"{steps} x {len(variant_parts)}.")
  results = [(collections.Counter(), collections.Counter()) for _ in variant_parts]
  for index, run in enumerate(ordered):
    parts = variant_parts[index % len(variant_parts)]
    ms, count = results[index % len(variant_parts)]
    for event in run:
      part = parts.get(event["name"])
      if part:
        ms[part] += event["dur"] / 1000 / steps
        count[part] += 1 / steps
  return results


def profile_variants(model: str, dtype: str, batch: dict, trace_dir: str) -> dict:
  """Attention -> kernel milliseconds and counts per step of each model part, over `--steps`
  traced rounds after `--warmup` untraced ones."""
  variants = [train_step_bench.build_variant(model, attention, dtype, batch, False)
              for attention in FLAGS.attentions]
  train_step_bench.time_alternated(variants, batch, FLAGS.warmup, 0)
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  train_step_bench.time_alternated(variants, batch, 0, FLAGS.steps)
  jax.profiler.stop_trace()
  parts = [kernel_parts(variant.step.as_text()) for variant in variants]
  return dict(zip(FLAGS.attentions, traced_kernel_ms(trace_dir, parts, FLAGS.steps)))


def main(argv):
  del argv
  batch = train_step_bench.make_batch(FLAGS.batch, FLAGS.image_size)
  print(f"\nKernel time of the training step (`train_state.train_step`), batch {FLAGS.batch}, "
        f"{FLAGS.image_size} px: milliseconds per step (kernels per step), mean of {FLAGS.steps} "
        f"traced steps after {FLAGS.warmup} untraced. jax {jax.__version__}, "
        f"{jax.default_backend()}. Command: "
        f"`{' '.join(['python -m bench.kernel_time', *sys.argv[1:]])}`.")
  for model in FLAGS.models:
    for dtype in FLAGS.dtypes:
      with tempfile.TemporaryDirectory() as tmp:
        print_table(f"{model}, {dtype}:", profile_variants(model, dtype, batch, tmp))


def print_table(title: str, results: dict) -> None:
  print(f"\n{title}\n")
  print("| attention | " + " | ".join(PARTS) + " | all kernels | vs plain |")
  print("|---|" + "---:|" * (len(PARTS) + 2))
  plain_total = sum(results["none"][0].values()) if "none" in results else None
  for attention, (ms, count) in results.items():
    total = sum(ms.values())
    ratio = f"{total / plain_total:.3f}" if plain_total else "-"
    cells = " | ".join(f"{ms[p]:.1f} ({count[p]:.0f})" for p in PARTS)
    print(f"| {attention} | {cells} | {total:.1f} ({sum(count.values()):.0f}) | {ratio} |")


if __name__ == "__main__":
  app.run(main)
