"""Parameter-free layers and initialisers shared by the attention blocks and the ResNets.

ReLU and the pooling layers are modules (not bare functions) so that the operation counter in
`lct_flax.flops` sees them, as ptflops sees torch's `nn.ReLU`, `nn.MaxPool2d` and
`nn.AdaptiveAvgPool2d` modules.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lct_flax import batch_norm_passes

# PyTorch `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: an untruncated normal with
# variance 2 / fan_out, as torchvision and timm initialise every convolution.
he_fan_out_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's default `nn.Linear` weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias(fan_in: int):
  """PyTorch's default `nn.Linear` bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class ReLU(nn.Module):
  """max(x, 0)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.relu(x)


class MaxPool(nn.Module):
  """3x3 max-pool, stride 2, symmetric padding 1 (torchvision's stem), padding with -inf."""
  window: int = 3
  stride: int = 2
  padding: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = ((self.padding, self.padding),) * 2
    return nn.max_pool(x, (self.window,) * 2, (self.stride,) * 2, padding=pad)


class GlobalAvgPool(nn.Module):
  """Mean over H and W of an NHWC tensor, accumulated in float32; returns (N, C) float32."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2), dtype=jnp.float32)


class BatchNorm(nn.Module):
  """Batch normalisation with PyTorch's semantics (torch.nn.BatchNorm2d), NHWC.

  Training normalises with the batch mean and biased variance; the running statistics are updated
  as `running = momentum * running + (1 - momentum) * batch` (flax's convention: 0.9 here is
  PyTorch's momentum 0.1) with the *unbiased* batch variance, as PyTorch does. Statistics are in
  float32 whatever the activation dtype. `group_size` normalises each run of `group_size`
  consecutive examples with its own statistics (the per-GPU BatchNorm of multi-GPU PyTorch
  training); None uses the whole (global) batch. Variables are named as flax's BatchNorm's:
  params `scale`, `bias`; batch_stats `mean`, `var`.

  `gate` (optional) is the gate of a channel-attention block that follows this layer: a function
  from the per-example spatial mean of the normalised output, (N, C) float32, to per-example channel
  multipliers (N, C) (`attention.LCT.gate`, `attention.SE.gate`). The output is then
  BN(x) * gate(mean_hw BN(x)), the same values as the attention block applied to BN's output, but
  computed as (x - mean) * (k * g) + bias * g with k = scale / sqrt(var + eps): the context is
  the affine image of x's own spatial mean (which also gives the batch mean), and neither BN(x)
  nor the gated output is an array of its own, so training does not keep an extra activation for
  the gradient of the gate (bench/RESULTS.md). The context's gradient is computed once, as an
  (N, C) array (`materialized_cotangent`), not inside each full-size loop of the backward pass.

  The statistics and the normalisation are `batch_norm_passes.moments` and `.normalize`, whose
  gradients are written by hand: the backward reduces the activation's cotangent once, to the
  per-example sums every other gradient is made from, instead of once per statistic and
  parameter (bench/RESULTS.md: 13% fewer kernels and 9% less HBM traffic in ResNet-50's step).
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  group_size: int | None = None
  scale_init: nn.initializers.Initializer = nn.initializers.ones
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array,
               gate: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    n = x.shape[0]
    if self.use_running_average:
      groups, mean, var = 1, running_mean.value[None], running_var.value[None]
      example_means = None if gate is None else GlobalAvgPool(name="pool")(x.astype(jnp.float32))
    else:
      groups = _groups(n, self.group_size)
      example_means, mean, var = batch_norm_passes.moments(
          x.astype(jnp.float32), groups, gate is not None)
      if not self.is_initializing():
        m, count = self.momentum, x.size // (channels * groups)
        unbiased = var * (count / max(count - 1, 1))
        running_mean.value = m * running_mean.value + (1 - m) * jnp.mean(mean, axis=0)
        running_var.value = m * running_var.value + (1 - m) * jnp.mean(unbiased, axis=0)
    gain = jnp.repeat(jax.lax.rsqrt(var + self.epsilon) * scale, n // groups, axis=0)
    shift = jnp.broadcast_to(bias, gain.shape)
    if gate is not None:
      context = (example_means - jnp.repeat(mean, n // groups, axis=0)) * gain + bias
      g = gate(materialized_cotangent(context)).astype(jnp.float32)
      gain, shift = gain * g, bias * g
    return batch_norm_passes.normalize(x, mean, gain, shift, groups).astype(self.dtype)


@jax.custom_vjp
def materialized_cotangent(v: jax.Array) -> jax.Array:
  """The identity, whose cotangent becomes an array of its own in the backward pass.

  XLA fuses cheap elementwise producers into each of their consumers. When the consumer
  broadcasts them, as BatchNorm's (N, H, W, C) input-gradient loops broadcast the (N, C) gradient
  of the attention's context, the whole elementwise chain behind that gradient (the gate's and
  the group normalisation's backward, eqs. 2-5) is recomputed for every element of every such
  loop. A reduction is never fused into its consumers, so the cotangent is passed through one
  (a sum with zeros, which leaves every value as it is): the chain is computed once, on N x C
  values (bench/RESULTS.md).
  """
  return v


def _materialized_cotangent_fwd(v: jax.Array):
  return v, None


def _materialized_cotangent_bwd(_, cotangent: jax.Array):
  return (jnp.sum(jnp.stack([cotangent, jnp.zeros_like(cotangent)]), axis=0),)


materialized_cotangent.defvjp(_materialized_cotangent_fwd, _materialized_cotangent_bwd)


def _groups(batch: int, group_size: int | None) -> int:
  """How many groups of `group_size` examples the batch's statistics are taken over."""
  size = batch if group_size is None else group_size
  if size < 1 or batch % size:
    raise ValueError(f"BatchNorm: batch of {batch} examples does not split into groups of "
                     f"{group_size}; set bn_group_size to a divisor of the per-step batch.")
  return batch // size
