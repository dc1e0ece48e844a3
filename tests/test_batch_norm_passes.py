"""BatchNorm's hand-written training gradients against JAX's gradients of the same expressions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lct_flax import batch_norm_passes


def reference_moments(x, groups, per_example):
  n, c = x.shape[0], x.shape[-1]
  xg = x.reshape(groups, -1, c)
  example_means = jnp.mean(x, axis=(1, 2))
  mean = (jnp.mean(example_means.reshape(groups, n // groups, c), axis=1) if per_example
          else jnp.mean(xg, axis=1))
  var = jnp.mean(jnp.square(xg - mean[:, None, :]), axis=1)
  return (example_means if per_example else None), mean, var


def reference_normalize(x, mean, gain, shift, groups):
  n, h, w, c = x.shape
  expand = lambda a, per: a.reshape(groups, per, 1, c)
  xg = x.astype(jnp.float32).reshape(groups, n // groups, h * w, c)
  return ((xg - expand(mean, 1)) * expand(gain, n // groups)
          + expand(shift, n // groups)).reshape(x.shape)


def gated_batch_norm(x, scale, bias, w, moments, normalize, groups):
  """The training BatchNorm of `layers.BatchNorm` with an LCT-like gate, from given parts."""
  n = x.shape[0]
  example_means, mean, var = moments(x, groups, True)
  gain = jnp.repeat(jax.lax.rsqrt(var + 1e-5) * scale, n // groups, axis=0)
  context = (example_means - jnp.repeat(mean, n // groups, axis=0)) * gain + bias
  g = jax.nn.sigmoid(w * context + 1.0)
  return normalize(x, mean, gain * g, bias * g, groups), var


def plain_batch_norm(x, scale, bias, w, moments, normalize, groups):
  n = x.shape[0]
  _, mean, var = moments(x, groups, False)
  gain = jnp.repeat(jax.lax.rsqrt(var + 1e-5) * scale, n // groups, axis=0)
  return normalize(x, mean, gain, jnp.broadcast_to(bias, gain.shape), groups), var


def loss_and_grads(layer, parts, groups, args):
  def loss(x, scale, bias, w, cotangent):
    y, var = layer(x, scale, bias, w, *parts, groups)
    return jnp.sum(y * cotangent) + jnp.sum(var * cotangent[0, 0, 0])
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(*args)


@pytest.mark.parametrize("layer", [gated_batch_norm, plain_batch_norm])
@pytest.mark.parametrize("groups", [1, 2])
def test_hand_written_gradients_equal_autodiff_of_the_same_expressions(layer, groups):
  rng = np.random.default_rng(0)
  args = [jnp.asarray(rng.normal(1.0, 2.0, size=shape), jnp.float32)
          for shape in ((4, 5, 6, 8), (8,), (8,), (8,), (4, 5, 6, 8))]
  value, grads = loss_and_grads(layer, (batch_norm_passes.moments, batch_norm_passes.normalize),
                                groups, args)
  ref_value, ref_grads = loss_and_grads(layer, (reference_moments, reference_normalize), groups,
                                        args)
  assert value == ref_value
  for grad, ref in zip(grads, ref_grads):
    # Float rounding moves them by about 1e-7 of the largest; a wrong term by 1e-2 or more.
    np.testing.assert_allclose(grad, ref, atol=1e-5 * float(jnp.max(jnp.abs(ref))))


def test_gradient_of_a_bfloat16_input_is_bfloat16():
  x = jnp.ones((2, 3, 3, 4), jnp.bfloat16)
  mean, gain = jnp.zeros((1, 4)), jnp.ones((2, 4))
  grad = jax.grad(lambda x: jnp.sum(batch_norm_passes.normalize(x, mean, gain, gain, 1)))(x)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(grad, np.float32), 1.0)
