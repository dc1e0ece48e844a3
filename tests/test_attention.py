"""LCT (eqs. 2-5), SE and SE+ against independent NumPy transcriptions of the paper's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lct_flax import attention
from lct_flax import blocks


def numpy_group_norm(z, groups, eps=1e-5):
  """Eqs. (2)-(3) for a context z of shape (N, C), float64."""
  c = z.shape[1]
  m = c // groups
  zhat = np.empty_like(z)
  for i in range(groups):                                 # v^i = z[m*i : m*(i+1)]
    v = z[:, m * i:m * (i + 1)]
    mu = v.mean(axis=1, keepdims=True)                    # eq. (3)
    sigma = np.sqrt(((v - mu) ** 2).mean(axis=1, keepdims=True) + eps)
    zhat[:, m * i:m * (i + 1)] = (v - mu) / sigma         # eq. (2)
  return zhat


def numpy_lct(x, w, b, groups, eps=1e-5, use_norm=True):
  """Eqs. (2)-(5) written out with NumPy in float64, NHWC."""
  x = np.asarray(x, np.float64)
  n, h, wd, c = x.shape
  z = x.sum(axis=(1, 2)) / (h * wd)                       # context aggregation
  zhat = numpy_group_norm(z, groups, eps) if use_norm else z
  a = w * zhat + b                                        # eq. (4)
  att = 1.0 / (1.0 + np.exp(-a))
  return x * att[:, None, None, :], att                   # eq. (5)


def random_lct_params(rng, c):
  return {"w": rng.normal(size=c).astype(np.float32), "b": rng.normal(size=c).astype(np.float32)}


@pytest.mark.parametrize("channels,groups", [(8, 1), (16, 4), (64, 32), (256, 64), (2048, 64)])
def test_lct_matches_numpy_float32(channels, groups):
  rng = np.random.default_rng(channels + groups)
  x = rng.normal(1.0, 2.0, size=(3, 5, 4, channels)).astype(np.float32)
  block = attention.LCT(groups=groups)
  params = random_lct_params(rng, channels)
  y = block.apply({"params": params}, jnp.asarray(x))
  expected, _ = numpy_lct(x, params["w"], params["b"], groups)
  rel = np.max(np.abs(np.asarray(y) - expected)) / np.max(np.abs(expected))
  assert y.dtype == jnp.float32 and y.shape == x.shape
  assert rel < 1e-5


def test_lct_statistics_in_float32_for_bfloat16_activations():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0.5, 1.0, size=(2, 7, 7, 2048)), jnp.bfloat16)
  params = random_lct_params(rng, 2048)
  y, state = attention.LCT(groups=64).apply({"params": params}, x, mutable=["intermediates"])
  att = np.asarray(state["intermediates"]["attention"][0])
  _, expected_att = numpy_lct(np.asarray(x.astype(jnp.float32)), params["w"], params["b"], 64)
  assert y.dtype == jnp.bfloat16 and att.dtype == np.float32
  assert np.max(np.abs(att - expected_att) / expected_att) < 1e-5


def test_lct_at_initialisation_is_x_times_sigmoid_one():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 32))
  block = attention.LCT(groups=8)
  variables = block.init(jax.random.key(1), x)
  np.testing.assert_array_equal(variables["params"]["w"], np.zeros(32, np.float32))
  np.testing.assert_array_equal(variables["params"]["b"], np.ones(32, np.float32))
  y = block.apply(variables, x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x * jax.nn.sigmoid(jnp.float32(1.0))))


def test_lct_without_transform_is_x_times_sigmoid_zhat():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 4, 32)).astype(np.float32)
  block = attention.LCT(groups=4, use_transform=False)
  variables = block.init(jax.random.key(0), jnp.asarray(x))
  assert "params" not in variables
  y = block.apply(variables, jnp.asarray(x))
  expected, _ = numpy_lct(x, 1.0, 0.0, 4)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-6)


def test_lct_without_normalisation_transforms_raw_context():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
  params = random_lct_params(rng, 6)
  y = attention.LCT(groups=64, use_norm=False).apply({"params": params}, jnp.asarray(x))
  expected, _ = numpy_lct(x, params["w"], params["b"], 64, use_norm=False)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-6)


def test_lct_initialisations_of_table5():
  x = jnp.ones((1, 2, 2, 8))
  variables = attention.LCT(groups=2, w_init=1.0, b_init=0.0).init(jax.random.key(0), x)
  np.testing.assert_array_equal(variables["params"]["w"], np.ones(8))
  np.testing.assert_array_equal(variables["params"]["b"], np.zeros(8))


def numpy_se_forward(x, p, use_norm, groups):
  x = np.asarray(x, np.float64)
  z = x.mean(axis=(1, 2))
  if use_norm:
    z = numpy_group_norm(z, groups)
  h = np.maximum(z @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0.0)
  a = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  return x * (1.0 / (1.0 + np.exp(-a)))[:, None, None, :]


@pytest.mark.parametrize("use_norm", [False, True])
def test_se_and_se_plus_match_numpy(use_norm):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 5, 5, 64)).astype(np.float32)
  block = attention.SE(reduction=16, use_norm=use_norm, groups=8)
  variables = block.init(jax.random.key(0), jnp.asarray(x))
  params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32) * 0.3,
                        variables["params"])
  assert params["fc1"]["kernel"].shape == (64, 4) and params["fc2"]["bias"].shape == (64,)
  y = block.apply({"params": params}, jnp.asarray(x))
  expected = numpy_se_forward(x, params, use_norm, 8)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("block,channels,match", [
    (attention.LCT(groups=64), 96, r"LCT: 64 groups do not divide 96 channels"),
    (attention.LCT(groups=64), 64, r"LCT: 64 channels in 64 groups leave 1 channel"),
    (attention.SE(reduction=16), 8, r"SE: reduction 16 leaves 0 hidden units for 8 channels"),
    (attention.SE(use_norm=True, groups=3), 64, r"SE\+: 3 groups do not divide 64 channels"),
    (attention.SE(use_norm=True, groups=64), 64, r"SE\+: 64 channels in 64 groups"),
])
def test_invalid_settings_raise_clear_errors(block, channels, match):
  with pytest.raises(ValueError, match=match):
    block.init(jax.random.key(0), jnp.zeros((1, 2, 2, channels)))


def test_registry_names_and_unknown_options():
  assert set(blocks.names()) == {"none", "se", "se_norm", "lct"}
  assert [blocks.get(n).label for n in ("lct", "se", "se_norm")] == ["LCT", "SE", "SE+"]
  assert attention.attention_factory(None) is None
  assert attention.attention_factory("se_norm")().use_norm is True
  with pytest.raises(ValueError, match="unknown attention 'cbam'"):
    attention.attention_factory("cbam")
  with pytest.raises(ValueError, match=r"attention 'lct' has no option\(s\) \['reduction'\]"):
    attention.attention_factory("lct", reduction=4)
  with pytest.raises(ValueError, match="attention 'none' takes no options"):
    attention.attention_factory("none", groups=4)
