"""Channel-attention blocks: LCT (Ruan et al., AAAI 2020, eqs. 2-5), SE and SE+ (Table 4).

All blocks take NHWC activations and return them rescaled per channel: `block(x)` is
`rescale(x, block.gate(mean_hw(x)))`, where `gate` maps the pooled (N, C) context to the (N, C)
attention. The ResNets call `gate` from their last BatchNorm, which pools and rescales in fewer
passes (`layers.BatchNorm`); the parameters and values are the same. Context pooling, group
statistics and the attention are float32 whatever the activation dtype; the output keeps the
activation dtype. Nothing here knows about training, so the blocks can be used alone in a notebook.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lct_flax import blocks
from lct_flax import layers


def check_groups(block: str, channels: int, groups: int) -> None:
  """Refuses group settings under which the group normalisation of eq. (2) is undefined or trivial.

  With one channel per group the normalised context (z - mu) / sigma is identically zero, so the
  attention would ignore its input; G must divide C (groups are contiguous channel ranges, m = C/G).
  """
  if groups < 1 or channels % groups != 0:
    raise ValueError(
        f"{block}: {groups} groups do not divide {channels} channels; "
        f"choose groups that divide {channels} (e.g. groups={_largest_valid_groups(channels)}).")
  if channels // groups < 2:
    raise ValueError(
        f"{block}: {channels} channels in {groups} groups leave {channels // groups} channel per "
        f"group, where the normalised context is identically 0; use groups <= {channels // 2}.")


def _largest_valid_groups(channels: int) -> int:
  return max((g for g in range(1, channels // 2 + 1) if channels % g == 0), default=1)


def check_reduction(block: str, channels: int, reduction: int) -> None:
  """Refuses an SE reduction that leaves no hidden unit (C // r < 1)."""
  if reduction < 1 or channels // reduction < 1:
    raise ValueError(
        f"{block}: reduction {reduction} leaves {channels // max(reduction, 1)} hidden units for "
        f"{channels} channels; use reduction <= {channels}.")


def normalize_groups(z: jax.Array, groups: int, epsilon: float) -> jax.Array:
  """Eqs. (2)-(3): normalise the pooled context z of shape (N, C) within G contiguous groups.

  Group i holds channels [i*m, (i+1)*m) with m = C/G; its mean and biased variance are taken over
  those m values and epsilon sits inside the square root. Computed in float32. The result passes
  an optimization barrier, which changes no value: without it XLA's GPU fusion pass tries to fuse
  these small (N, C) reductions into the activations' passes around them, which takes it most
  of a ResNet's compile and leaves more kernels, not fewer (bench/RESULTS.md, LCT on the targets).
  """
  n, c = z.shape
  v = z.astype(jnp.float32).reshape(n, groups, c // groups)
  mu = jnp.mean(v, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(v - mu), axis=-1, keepdims=True)
  return jax.lax.optimization_barrier(((v - mu) * jax.lax.rsqrt(var + epsilon)).reshape(n, c))


def _constant(value: float) -> Callable[..., jax.Array]:
  return lambda key, shape, dtype=jnp.float32: jnp.full(shape, value, dtype)


class ChannelAttention(nn.Module):
  """A channel-attention block: `block(x)` = `rescale(x, block.gate(mean_hw(x)))`. Subclasses
  define `gate`, (N, C) pooled context -> (N, C) attention."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return rescale(x, self.gate(layers.GlobalAvgPool(name="pool")(x)))


class LCT(ChannelAttention):
  """Linear Context Transform block (Fig. 2; eqs. 2-5).

  z = global average pool of x (context aggregation); zhat = group-normalised z (eqs. 2-3);
  a = w * zhat + b, one (w, b) pair per channel (eq. 4); y = x * sigmoid(a) (eq. 5).
  Table 5's best initialisation w=0, b=1 is the default. `use_norm=False` is Table 3's
  "w/o normalization" (a = w * z + b); `use_transform=False` is "w/o transform" (a = zhat, no
  parameters). `gate` alone maps a context z to sigmoid(a), for callers that pool and rescale
  themselves (the ResNet blocks fold both into their last BatchNorm: `layers.BatchNorm`).
  """
  groups: int = 64
  epsilon: float = 1e-5
  w_init: float = 0.0
  b_init: float = 1.0
  use_norm: bool = True
  use_transform: bool = True

  @nn.compact
  def gate(self, context: jax.Array) -> jax.Array:
    """Eqs. (2)-(4) and the sigmoid of eq. (5): (N, C) context -> (N, C) attention, float32."""
    channels = context.shape[-1]
    if self.use_norm:
      check_groups("LCT", channels, self.groups)
    a = normalize_groups(context, self.groups, self.epsilon) if self.use_norm else context
    if self.use_transform:
      w = self.param("w", _constant(self.w_init), (channels,), jnp.float32)
      b = self.param("b", _constant(self.b_init), (channels,), jnp.float32)
      a = w * a + b
    return _attention(self, a)


class SE(ChannelAttention):
  """Squeeze-and-Excitation block (eq. 1) as in SENet and timm's SE-ResNet.

  y = x * sigmoid(W2 relu(W1 z + b1) + b2) with W1: C -> C/r and W2: C/r -> C, both with biases.
  `use_norm=True` is SE+ of Table 4: the pooled context is group-normalised as in LCT (eqs. 2-3,
  G=`groups`) before the first FC layer.
  """
  reduction: int = 16
  use_norm: bool = False
  groups: int = 64
  epsilon: float = 1e-5

  @nn.compact
  def gate(self, context: jax.Array) -> jax.Array:
    """(N, C) context -> (N, C) attention sigmoid(W2 relu(W1 z + b1) + b2), float32 (the two
    layers run in float32 whatever the activation dtype: they are N x C x C/r multiply-adds)."""
    channels = context.shape[-1]
    name = "SE+" if self.use_norm else "SE"
    check_reduction(name, channels, self.reduction)
    z = context.astype(jnp.float32)
    if self.use_norm:
      check_groups(name, channels, self.groups)
      z = normalize_groups(z, self.groups, self.epsilon)
    dense = functools.partial(nn.Dense, dtype=jnp.float32, param_dtype=jnp.float32,
                              kernel_init=layers.he_fan_out_normal)
    h = layers.ReLU(name="relu")(dense(channels // self.reduction, name="fc1")(z))
    return _attention(self, dense(channels, name="fc2")(h))


def _attention(block: nn.Module, a: jax.Array) -> jax.Array:
  """sigmoid(a) in float32, sown into the "intermediates" collection as "attention" (kept only
  when it is mutable, e.g. for the Fig. 3 analysis)."""
  attention = nn.sigmoid(a.astype(jnp.float32))
  block.sow("intermediates", "attention", attention)
  return attention


def rescale(x: jax.Array, attention: jax.Array) -> jax.Array:
  """Eq. (5): y = x * attention, per example and channel; x is NHWC, attention (N, C)."""
  return x * attention[:, None, None, :].astype(x.dtype)


def attention_factory(attention: Optional[str], **kwargs) -> Optional[Callable[..., nn.Module]]:
  """A constructor of the block registered as `attention` (`lct_flax.blocks`) with `kwargs`
  bound, or None for no block."""
  block = blocks.get(attention)
  if block is None:
    if kwargs:
      raise ValueError(f"attention 'none' takes no options, got {sorted(kwargs)}.")
    return None
  return block.factory(**kwargs)
