"""Parameter and multiply-add counts of any model, read from the model's own layer shapes.

`count(model, input_shape)` traces one forward pass abstractly (`jax.eval_shape`: no weights are
materialised) and records the input and output shape of every layer. Two totals come out:

- `ptflops_macs`: the convention of the ptflops counter that the paper's FLOPs column (Table 1)
  comes from: multiply-adds of convolutions and linear layers (a bias adds one per output value),
  plus 2 per element for affine BatchNorm, 1 per output element for ReLU, 1 per input element for
  max- and average-pooling layers. Element-wise functional operations (the attention rescale,
  the sigmoid, eqs. 2-4 of LCT, residual additions) are not counted.
- `conv_linear_macs`: multiply-adds of convolutions and linear layers only.

`python -m lct_flax.flops` prints Table 1 (ResNet-50/101 x none/SE/LCT) beside the paper's figures.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lct_flax import layers
from lct_flax import models

# Table 1 of the paper: (model, attention) -> (parameters in M, GFLOPs).
PAPER_TABLE1 = {
    ("resnet50", None): (25.56, 4.122),
    ("resnet50", "se"): (28.09, 4.130),
    ("resnet50", "lct"): (25.59, 4.127),
    ("resnet101", None): (44.55, 7.849),
    ("resnet101", "se"): (49.33, 7.863),
    ("resnet101", "lct"): (44.61, 7.858),
}


@dataclasses.dataclass(frozen=True)
class Counts:
  params: int
  ptflops_macs: int
  conv_linear_macs: int


def _layer_macs(module: nn.Module, x: jax.ShapeDtypeStruct, y: jax.ShapeDtypeStruct):
  """(ptflops-convention count, conv+linear multiply-adds) of one layer call, per example."""
  in_elems, out_elems = math.prod(x.shape[1:]), math.prod(y.shape[1:])
  if isinstance(module, nn.Conv):
    per_output = math.prod(module.kernel_size) * x.shape[-1] // module.feature_group_count
    macs = out_elems * per_output
    return macs + (out_elems if module.use_bias else 0), macs
  if isinstance(module, nn.Dense):
    macs = in_elems * y.shape[-1]
    return macs + (y.shape[-1] if module.use_bias else 0), macs
  if isinstance(module, layers.BatchNorm):
    return 2 * in_elems, 0
  if isinstance(module, layers.ReLU):
    return out_elems, 0
  if isinstance(module, (layers.MaxPool, layers.GlobalAvgPool)):
    return in_elems, 0
  return 0, 0


def count(model: nn.Module, input_shape: Sequence[int] = (1, 224, 224, 3)) -> Counts:
  """Counts parameters and per-example multiply-adds of `model` on NHWC inputs of `input_shape`."""
  totals = [0, 0]

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and args:
      ptflops, conv_linear = _layer_macs(context.module, args[0], y)
      totals[0] += ptflops
      totals[1] += conv_linear
    return y

  def init():
    with nn.intercept_methods(interceptor):
      return model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False)

  variables = jax.eval_shape(init)
  params = sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))
  return Counts(params=params, ptflops_macs=totals[0], conv_linear_macs=totals[1])


def table1_rows():
  """Yields (model, attention, our Counts, paper params M, paper GFLOPs) for Table 1."""
  for (name, attention), (paper_params, paper_gflops) in PAPER_TABLE1.items():
    yield name, attention, count(models.create_model(name, attention=attention)), paper_params, \
        paper_gflops


def format_table1() -> str:
  lines = [
      "Table 1 (224x224 input, one image): ours vs. the paper",
      "",
      "| model | attention | params (M) | paper | diff | GFLOPs (ptflops) | paper | diff "
      "| conv+linear GMACs |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, attention, c, paper_params, paper_gflops in table1_rows():
    params_m, gflops = c.params / 1e6, c.ptflops_macs / 1e9
    lines.append(
        f"| {name} | {attention or 'none'} | {params_m:.3f} | {paper_params:.2f} | "
        f"{params_m - paper_params:+.3f} | {gflops:.4f} | {paper_gflops:.3f} | "
        f"{100 * (gflops - paper_gflops) / paper_gflops:+.2f}% | {c.conv_linear_macs / 1e9:.4f} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    print(f"usage: python -m lct_flax.flops  (takes no arguments, got {argv[1:]})", file=sys.stderr)
    return 2
  print(format_table1())
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
