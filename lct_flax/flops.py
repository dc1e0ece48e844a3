"""Parameter and multiply-add counts of any model, read from the model's own layer shapes.

`count(model, input_shape)` traces one forward pass abstractly (`jax.eval_shape`: no weights are
materialised) and records the input and output shape of every layer. Two totals come out:

- `ptflops_macs`: the convention of the ptflops counter that the paper's FLOPs column (Table 1)
  comes from: multiply-adds of convolutions and linear layers (a bias adds one per output value),
  plus 2 per element for affine BatchNorm, 1 per output element for ReLU, 1 per input element for
  max- and average-pooling layers. Element-wise functional operations (the attention rescale,
  the sigmoid, eqs. 2-4 of LCT, residual additions) are not counted.
- `conv_linear_macs`: multiply-adds of convolutions and linear layers only.

`python -m lct_flax.flops` prints Table 1 (ResNet-50/101 x none/SE/LCT) beside the paper's figures,
then Table 6's ΔParams / ΔFLOPs: what SE and LCT add to the ResNet-101 detection backbone (C2-C5,
no classifier) at `TABLE6_INPUT_SHAPE`.
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

# Table 6 of the paper (every detector alike): attention -> (ΔParams in M, ΔGFLOPs) of the
# ResNet-101 backbone over the plain one. The paper does not give the input size. Its ΔParams equal
# the differences of Table 1's rounded totals (44.61 - 44.55 = 0.06; exactly, LCT adds 65,024).
PAPER_TABLE6_DELTAS = {"se": (4.78, 0.191), "lct": (0.06, 0.187)}
# The input at which the backbone's ΔFLOPs equal the paper's to its printed precision: of the
# inputs tried (W x H: 1333x800, 1344x800, 1312x800, 1280x800, 1216x800, 800x1280, 1024x1024),
# only 1024x1024 (what mmdetection's `tools/get_flops.py --shape 1024` feeds) gives both +0.191G
# and +0.187G; the nominal 1333x800 gives +0.196G and +0.191G.
TABLE6_INPUT_SHAPE = (1, 1024, 1024, 3)


@dataclasses.dataclass(frozen=True)
class Counts:
  params: int
  ptflops_macs: int
  conv_linear_macs: int


def _layer_macs(module: nn.Module, x: jax.ShapeDtypeStruct, y: jax.ShapeDtypeStruct):
  """(ptflops-convention count, conv+linear multiply-adds) of one layer call, per example; (0, 0)
  for containers (their layers are counted one by one)."""
  if not isinstance(module, (nn.Conv, nn.Dense, layers.BatchNorm, layers.ReLU, layers.MaxPool,
                             layers.GlobalAvgPool)):
    return 0, 0
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
  return in_elems, 0  # MaxPool, GlobalAvgPool


def count(model: nn.Module, input_shape: Sequence[int] = (1, 224, 224, 3),
          features_only: bool = False) -> Counts:
  """Counts parameters and per-example multiply-adds of `model` on NHWC inputs of `input_shape`;
  with `features_only`, of the ResNet's C2-C5 backbone (no pooling, no classifier: not created)."""
  totals = [0, 0]
  call_kwargs = {"features_only": True} if features_only else {}

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and args:
      ptflops, conv_linear = _layer_macs(context.module, args[0], y)
      totals[0] += ptflops
      totals[1] += conv_linear
    return y

  def init():
    with nn.intercept_methods(interceptor):
      return model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False,
                        **call_kwargs)

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


def table6_rows():
  """Yields (attention, our backbone Counts, paper (ΔParams M, ΔGFLOPs) or None for the plain
  backbone) for ResNet-101's C2-C5 backbone at `TABLE6_INPUT_SHAPE`."""
  for attention in (None, "se", "lct"):
    model = models.create_model("resnet101", attention=attention)
    yield attention, count(model, TABLE6_INPUT_SHAPE, features_only=True), \
        PAPER_TABLE6_DELTAS.get(attention)


def format_table6() -> str:
  _, height, width, _ = TABLE6_INPUT_SHAPE
  lines = [
      f"Table 6 (ResNet-101 backbone: C2-C5, no classifier; {width}x{height} input, one image): "
      "Δ vs the plain backbone, ours vs the paper",
      "",
      "| backbone | attention | params (M) | ΔParams (M) | paper | GFLOPs (ptflops) | ΔGFLOPs "
      "| paper | conv+linear GMACs |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  rows = list(table6_rows())
  base = rows[0][1]
  for attention, c, paper in rows:
    if paper:
      delta_params = f"{(c.params - base.params) / 1e6:+.3f} | {paper[0]:+.2f}"
      delta_gflops = f"{(c.ptflops_macs - base.ptflops_macs) / 1e9:+.3f} | {paper[1]:+.3f}"
    else:
      delta_params = delta_gflops = "- | -"
    lines.append(
        f"| resnet101 | {attention or 'none'} | {c.params / 1e6:.3f} | {delta_params} | "
        f"{c.ptflops_macs / 1e9:.3f} | {delta_gflops} | {c.conv_linear_macs / 1e9:.3f} |")
  lines += ["", "The paper's ΔParams are differences of Table 1's rounded totals "
            "(LCT: 44.61 - 44.55 = 0.06)."]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    print(f"usage: python -m lct_flax.flops  (takes no arguments, got {argv[1:]})", file=sys.stderr)
    return 2
  print(format_table1())
  print()
  print(format_table6())
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
