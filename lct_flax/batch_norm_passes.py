"""BatchNorm's two steps, the statistics and the normalisation, with gradients written by hand:
the statistics' backward is one elementwise pass over the activation, the normalisation's one
reduction and one elementwise pass.

`layers.BatchNorm` computes, per group of examples (G groups of N/G; G = 1 is the whole batch),

    example_means, mean, var = moments(x)          # (N, C), (G, C), (G, C)
    y = (x - mean) * gain + shift                  # gain, shift: (N, C), from the statistics,
                                                   # scale, bias and an attention gate

JAX's own gradient of those expressions reduces the full-size cotangent once for every
(N, C) or (C) quantity it reaches (the mean, the normaliser, the gate, scale, bias), and XLA
splits each of those reductions into kernels of their own. By hand, the backward of
`normalize` reduces the cotangent once, to the two per-example sums every parameter's gradient
is made from (S1 = sum_hw dy, S2 = sum_hw dy * (x - mean)), and the backward of `moments` is
one elementwise pass. The values are the same expressions; gradients agree to float rounding
(bench/RESULTS.md has the kernels and traffic this saves on the targets).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _grouped(x: jax.Array, groups: int) -> jax.Array:
  """(N, H, W, C) -> (G, N/G, H*W, C)."""
  n, h, w, c = x.shape
  return x.reshape(groups, n // groups, h * w, c)


def _per_example(stat: jax.Array) -> jax.Array:
  """(G, N/G, C) -> (N, C)."""
  return stat.reshape(-1, stat.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def moments(x: jax.Array, groups: int, per_example: bool):
  """Float32 (N, H, W, C) -> (each example's spatial mean (N, C), or None without
  `per_example`; each group's mean (G, C); each group's biased variance (G, C)). With
  `per_example` the group mean is the mean of its examples' means (every example has H*W
  positions), so the attention's context and the statistics share one reduction."""
  n, c = x.shape[0], x.shape[-1]
  xg = x.reshape(groups, -1, c)
  if per_example:
    example_means = jnp.mean(x, axis=(1, 2))
    mean = jnp.mean(example_means.reshape(groups, n // groups, c), axis=1)
  else:
    example_means, mean = None, jnp.mean(xg, axis=1)
  var = jnp.mean(jnp.square(xg - mean[:, None, :]), axis=1)
  return example_means, mean, var


def _moments_forward(x: jax.Array, groups: int, per_example: bool):
  statistics = moments(x, groups, per_example)
  return statistics, (x, statistics[1])


def _moments_backward(groups: int, per_example: bool, residuals, cotangents):
  """dx = d example_mean / (H*W) + d mean / m + d var * 2 (x - mean) / m, m = N/G * H * W (the
  variance's term through the mean vanishes: the deviations sum to zero)."""
  x, mean = residuals
  d_example_means, d_mean, d_var = cotangents
  xg = _grouped(x, groups)
  per_group, positions = xg.shape[1], xg.shape[2]
  count = per_group * positions
  dx = (d_mean[:, None, None, :] / count
        + (2.0 / count) * d_var[:, None, None, :] * (xg - mean[:, None, None, :]))
  if per_example:
    dx = dx + d_example_means.reshape(groups, per_group, 1, -1) / positions
  return (dx.reshape(x.shape),)


moments.defvjp(_moments_forward, _moments_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def normalize(x: jax.Array, mean: jax.Array, gain: jax.Array, shift: jax.Array,
              groups: int) -> jax.Array:
  """y = (x - mean of the example's group) * gain + shift, float32: x (N, H, W, C) in any float
  dtype, mean (G, C), gain and shift (N, C)."""
  xg = _grouped(x.astype(jnp.float32), groups)
  per_example = lambda a: a.reshape(groups, -1, 1, a.shape[-1])
  y = (xg - mean[:, None, None, :]) * per_example(gain) + per_example(shift)
  return y.reshape(x.shape)


def _normalize_forward(x, mean, gain, shift, groups):
  return normalize(x, mean, gain, shift, groups), (x, mean, gain)


def _normalize_backward(groups: int, residuals, dy: jax.Array):
  """From S1 = sum_hw dy and S2 = sum_hw dy * (x - mean), per example: d gain = S2,
  d shift = S1, d mean = -sum over the group's examples of gain * S1; dx = dy * gain."""
  x, mean, gain = residuals
  dyg = _grouped(dy, groups)
  centred = _grouped(x.astype(jnp.float32), groups) - mean[:, None, None, :]
  s1 = jnp.sum(dyg, axis=2)
  s2 = jnp.sum(dyg * centred, axis=2)
  d_mean = -jnp.sum(s1 * gain.reshape(s1.shape), axis=1)
  dx = (dy * gain[:, None, None, :]).astype(x.dtype)
  return dx, d_mean, _per_example(s2), _per_example(s1)


normalize.defvjp(_normalize_forward, _normalize_backward)
