"""What XLA makes of one residual block with none/SE/LCT: fusions and passes over the activation.

Compiles a ResNet-50 bottleneck block (layer1 shape: 56x56, 64 planes, 256 channels in and out,
identity shortcut) in training mode, forward alone and forward+backward (gradients of all
parameters and of the input), and prints per variant:

* fusions: fusion ops in the compiled entry computation (each one is a kernel launch / loop nest);
* full-size readers: ops of the entry computation that read an array as large as the block's
  activation (batch x 56 x 56 x 256), i.e. passes over the activation in memory;
* bytes accessed: XLA's `cost_analysis()` estimate for the whole computation;
* temp: XLA's temporary buffers (`memory_analysis()`), which include what the forward keeps for
  the backward.

  python -m bench.hlo_report [--batch=8 --dtype=float32 --dump_dir=DIR --timed_rounds=N]
  (repository root)

`--dump_dir` also writes each compiled HLO module as text, for reading; `--timed_rounds` also
times the compiled forward+backward of each variant (a block is short, so many alternated calls
fit in a minute: a steadier ratio than whole-network steps on a shared machine).
"""

import functools
import os
import re
import statistics
import sys
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lct_flax import attention as attention_lib
from lct_flax import blocks
from lct_flax import layers
from lct_flax import models

_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_ATTENTIONS = flags.DEFINE_list("attentions", ["none", "se", "lct"], "Attention blocks.")
_DUMP_DIR = flags.DEFINE_string("dump_dir", None, "Where to write the compiled HLO text.")
_TIMED_ROUNDS = flags.DEFINE_integer(
    "timed_rounds", 0, "Also time the forward+backward of each variant this many times, "
    "alternated, and print the median (0: no timing).")

SIZE, PLANES, CHANNELS = 56, 64, 256
# One instruction of an HLO module: `  [ROOT ]%name = shape opcode(operands), attributes`.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][\w\-]*)\((.*)$")
_NO_PASS = ("parameter", "constant", "bitcast", "tuple", "get-tuple-element")


def make_block(attention: str, dtype) -> models.ResidualBlock:
  """A training-mode bottleneck block built as `models.ResNet` builds its blocks."""
  conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                           kernel_init=layers.he_fan_out_normal)
  norm = functools.partial(layers.BatchNorm, use_running_average=False, dtype=dtype)
  return models.ResidualBlock(
      planes=PLANES, stride=1, bottleneck=True, conv=conv, norm=norm,
      attention=attention_lib.attention_factory(attention),
      attention_name=blocks.get(attention).module_name if attention != "none" else "attention")


def compile_block(attention: str, dtype, batch: int, backward: bool):
  """The compiled forward (or forward+backward) of one block on a (batch, 56, 56, 256) input,
  and the arguments to call it with."""
  block = make_block(attention, dtype)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, SIZE, SIZE, CHANNELS)), dtype)
  variables = block.init(jax.random.PRNGKey(0), x)

  def forward(params, x):
    y, new_vars = block.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              mutable=["batch_stats"])
    return y, new_vars["batch_stats"]

  def loss(params, x, cotangent):
    y, batch_stats = forward(params, x)
    return jnp.sum(y.astype(jnp.float32) * cotangent), batch_stats

  if backward:
    fn = jax.grad(loss, argnums=(0, 1), has_aux=True)
    args = (variables["params"], x, jnp.ones(x.shape, jnp.float32))
  else:
    fn, args = forward, (variables["params"], x)
  return jax.jit(fn).lower(*args).compile(), args


def time_alternated(compiled: dict, rounds: int) -> dict:
  """Seconds per call of each compiled block, the variants run in turn (A B C A B C ...) after
  one untimed round."""
  times = {name: [] for name in compiled}
  for round_index in range(rounds + 1):
    for name, (fn, args) in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      if round_index:
        times[name].append(time.perf_counter() - start)
  return times


def entry_instructions(hlo_text: str):
  """(name, shape, opcode, operand names) of each instruction of the ENTRY computation."""
  lines = hlo_text.split("\n")
  start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
  for line in lines[start + 1:]:
    if line.startswith("}"):
      return
    match = _INSTRUCTION.match(line)
    if match:
      name, shape, opcode, rest = match.groups()
      operands = rest.split("), ")[0]
      yield name, shape, opcode, re.findall(r"%([\w.\-]+)", operands)


def num_elements(shape: str) -> int:
  dims = re.match(r"^\w+\[([\d,]*)\]", shape)
  return int(np.prod([int(d) for d in dims.group(1).split(",") if d])) if dims else 0


def analyse(compiled, activation_elements: int) -> dict:
  """Fusions, ops reading a full-size array, and bytes accessed of a compiled computation."""
  shapes, fusions, full_readers = {}, 0, 0
  for name, shape, opcode, operands in entry_instructions(compiled.as_text()):
    shapes[name] = shape
    if opcode in _NO_PASS:
      continue
    fusions += opcode == "fusion"
    full_readers += any(num_elements(shapes.get(o, "")) == activation_elements for o in operands)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"fusions": fusions, "full_readers": full_readers,
          "bytes": cost.get("bytes accessed", float("nan")),
          "temp": compiled.memory_analysis().temp_size_in_bytes}


def main(argv):
  del argv
  dtype = jnp.dtype(_DTYPE.value)
  batch = _BATCH.value
  activation_elements = batch * SIZE * SIZE * CHANNELS
  activation_mib = activation_elements * dtype.itemsize / 2**20
  print(f"\nResidual block ({SIZE}x{SIZE}, {PLANES} planes, {CHANNELS} channels), {dtype.name}, "
        f"batch {batch}, training mode; one activation = {activation_mib:.1f} MiB. jax "
        f"{jax.__version__}, {jax.default_backend()}. Command: "
        f"`{' '.join(['python -m bench.hlo_report', *sys.argv[1:]])}`.\n")
  print("| attention | pass | fusions | full-size readers | MB accessed (cost_analysis) "
        "| vs plain | XLA temp MiB |")
  print("|---|---|---:|---:|---:|---:|---:|")
  timed = {}
  for backward in (False, True):
    plain_bytes = None
    for attention in _ATTENTIONS.value:
      compiled, args = compile_block(attention, dtype, batch, backward)
      if backward:
        timed[attention] = (compiled, args)
      result = analyse(compiled, activation_elements)
      plain_bytes = result["bytes"] if attention == "none" else plain_bytes
      ratio = f"{result['bytes'] / plain_bytes:.3f}" if plain_bytes else "-"
      kind = "fwd+bwd" if backward else "fwd"
      print(f"| {attention} | {kind} | {result['fusions']} | {result['full_readers']} "
            f"| {result['bytes'] / 1e6:.0f} | {ratio} | {result['temp'] / 2**20:.0f} |")
      if _DUMP_DIR.value:
        os.makedirs(_DUMP_DIR.value, exist_ok=True)
        path = os.path.join(_DUMP_DIR.value, f"{attention}_{kind.replace('+', '_')}.txt")
        with open(path, "w") as f:
          f.write(compiled.as_text())
  if _TIMED_ROUNDS.value:
    print_times(time_alternated(timed, _TIMED_ROUNDS.value), _TIMED_ROUNDS.value)


def print_times(times: dict, rounds: int) -> None:
  plain = statistics.median(times["none"]) if "none" in times else None
  print(f"\nforward+backward of the block, {rounds} timed calls per variant, alternated, after one "
        f"untimed round; load average {os.getloadavg()[0]:.1f} at the end:\n")
  print("| attention | ms (median) | min-max ms | vs plain |")
  print("|---|---:|---:|---:|")
  for attention, values in times.items():
    median = statistics.median(values)
    ratio = f"{median / plain:.3f}" if plain else "-"
    spread = f"{1000 * min(values):.1f}-{1000 * max(values):.1f}"
    print(f"| {attention} | {1000 * median:.1f} | {spread} | {ratio} |")


if __name__ == "__main__":
  app.run(main)
