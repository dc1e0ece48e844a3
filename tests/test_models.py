"""ResNet v1.5 family: Table 1 parameter counts, shapes and dtypes, BatchNorm semantics, errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lct_flax import attention as attention_lib
from lct_flax import flops
from lct_flax import layers
from lct_flax import models

DEPTHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
ATTENTIONS = [None, "se", "se_norm", "lct"]


def attention_options(name, attention):
  # Plain ResNet-18/34 blocks have 64 channels: G=64 would leave one channel per group.
  if attention in ("lct", "se_norm") and not models.BOTTLENECK[name]:
    return {"groups": 32}
  return {}


def abstract_variables(model, shape=(2, 224, 224, 3), train=False):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=train))


@pytest.mark.parametrize("key,expected", list(flops.PAPER_TABLE1.items()))
def test_table1_parameter_counts(key, expected):
  name, attention = key
  counts = flops.count(models.create_model(name, attention=attention))
  assert abs(counts.params / 1e6 - expected[0]) <= 0.01


# Every attention in both dtypes on both kinds of block (basic: ResNet-18, bottleneck: ResNet-50);
# the other depths differ from these only in their stages' block counts: once each, with LCT.
BLOCK_KINDS = ("resnet18", "resnet50")
FORWARD_CASES = [(name, attention, dtype) for name in BLOCK_KINDS
                 for attention in ATTENTIONS for dtype in (jnp.float32, jnp.bfloat16)] + [
                     (name, "lct", jnp.bfloat16) for name in DEPTHS if name not in BLOCK_KINDS]


@pytest.mark.parametrize("name,attention,dtype", FORWARD_CASES)
def test_forward_shapes_and_dtypes_every_depth_and_attention(name, attention, dtype):
  model = models.create_model(name, attention=attention, num_classes=10, dtype=dtype,
                              **attention_options(name, attention))
  x = jnp.zeros((2, 64, 64, 3))
  variables = abstract_variables(model, x.shape)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  logits, state = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


def test_attention_sits_on_block_output_channels_before_the_residual_add():
  model = models.create_model("resnet50", attention="lct")
  params = abstract_variables(model)["params"]
  assert params["layer1_0"]["lct"]["w"].shape == (256,)
  assert params["layer4_2"]["lct"]["b"].shape == (2048,)
  se = abstract_variables(models.create_model("resnet50", attention="se"))["params"]
  assert se["layer3_0"]["se"]["fc1"]["kernel"].shape == (1024, 64)


def test_torchvision_geometry_stem_and_strides():
  model = models.create_model("resnet50")
  variables = abstract_variables(model)
  params = variables["params"]
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
  assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)    # stride on the 3x3
  assert params["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 256, 512)
  _, inter = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 224, 224, 3)),
                                                  capture_intermediates=True,
                                                  mutable=["intermediates"]), variables)
  inter = inter["intermediates"]
  assert inter["conv1"]["__call__"][0].shape == (1, 112, 112, 64)
  assert inter["maxpool"]["__call__"][0].shape == (1, 56, 56, 64)
  assert inter["layer2_0"]["conv1"]["__call__"][0].shape == (1, 56, 56, 128)
  assert inter["layer2_0"]["conv2"]["__call__"][0].shape == (1, 28, 28, 128)
  assert inter["layer4_2"]["__call__"][0].shape == (1, 7, 7, 2048)


def test_stride_two_padding_is_symmetric_as_in_pytorch():
  # 'SAME' pads (2, 3) for a 7x7/2 conv on even inputs; PyTorch pads (3, 3). A one-hot input at the
  # top-left pixel shows the difference: only symmetric padding makes output (0, 0) see it at
  # kernel tap (3, 3).
  model = models.create_model("resnet18", num_classes=2, width=0.25)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  kernel = np.zeros((7, 7, 3, 16), np.float32)
  kernel[3, 3, 0, 0] = 1.0
  x = np.zeros((1, 32, 32, 3), np.float32)
  x[0, 0, 0, 0] = 1.0
  params = jax.tree.map(lambda p: p, variables["params"])
  params["conv1"]["kernel"] = jnp.asarray(kernel)
  _, inter = model.apply({**variables, "params": params}, jnp.asarray(x),
                         capture_intermediates=True, mutable=["intermediates"])
  stem = np.asarray(inter["intermediates"]["conv1"]["__call__"][0])
  assert stem[0, 0, 0, 0] == 1.0 and stem.sum() == 1.0


def test_init_statistics_follow_torchvision():
  model = models.create_model("resnet18", num_classes=1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  kernel = np.asarray(variables["params"]["layer3_1"]["conv1"]["kernel"])     # 3x3, 256 -> 256
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 256)), rtol=0.02)
  assert np.abs(kernel).max() > 2.5 * kernel.std()                            # untruncated normal
  fc = np.asarray(variables["params"]["fc"]["kernel"])
  assert np.abs(fc).max() <= 1 / np.sqrt(512) and fc.std() > 0.9 / np.sqrt(3 * 512)
  np.testing.assert_array_equal(variables["params"]["layer1_0"]["bn2"]["scale"], np.ones(64))
  zero_init = models.create_model("resnet18", zero_init_last_bn=True)
  zero = zero_init.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]["layer1_0"]
  np.testing.assert_array_equal(zero["bn2"]["scale"], np.zeros(64))
  np.testing.assert_array_equal(zero["bn1"]["scale"], np.ones(64))


def test_tiny_model_runs_in_bfloat16_with_float32_parameters():
  model = models.create_model("resnet18", attention="lct", num_classes=10, width=0.25,
                              small_stem=True, dtype=jnp.bfloat16, groups=4)
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = model.init(jax.random.key(1), x)
  logits, state = model.apply(variables, x, train=True,
                              mutable=["batch_stats", "intermediates"])
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
  att = state["intermediates"]["layer1_0"]["lct"]["attention"][0]
  assert att.shape == (4, 16) and att.dtype == jnp.float32
  stats = state["batch_stats"]["layer1_0"]["bn1"]
  assert stats["mean"].dtype == jnp.float32
  assert not np.allclose(stats["mean"], 0.0)   # running statistics were updated
  f32 = models.create_model("resnet18", attention="lct", num_classes=10, width=0.25,
                            small_stem=True, groups=4)
  logits32 = f32.apply(variables, x, train=False)
  np.testing.assert_allclose(model.apply(variables, x), logits32, rtol=0.1, atol=0.1)


def numpy_torch_batchnorm(x, running_mean, running_var, momentum=0.1, eps=1e-5):
  """torch.nn.BatchNorm2d.train() forward and running-statistics update, NHWC, float64."""
  x = x.astype(np.float64)
  mean = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  n = x.size // x.shape[-1]
  y = (x - mean) / np.sqrt(var + eps)
  new_mean = (1 - momentum) * running_mean + momentum * mean
  new_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)
  return y, new_mean, new_var


def test_batchnorm_matches_pytorch_semantics():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(8, 5, 5, 4)).astype(np.float32)
  bn = layers.BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(0), jnp.asarray(x))
  y, state = bn.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
  ey, emean, evar = numpy_torch_batchnorm(x, np.zeros(4), np.ones(4))
  np.testing.assert_allclose(np.asarray(y), ey, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["mean"], emean, rtol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["var"], evar, rtol=1e-5)
  eval_y = layers.BatchNorm(use_running_average=True).apply(
      {**variables, "batch_stats": state["batch_stats"]}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(eval_y),
                             (x - emean) / np.sqrt(evar + 1e-5), rtol=1e-4, atol=1e-5)


def test_batchnorm_group_statistics_are_per_group_of_examples():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 3, 3, 4)).astype(np.float32)
  x[4:] += 10.0
  bn = layers.BatchNorm(use_running_average=False, group_size=4)
  variables = bn.init(jax.random.key(0), jnp.asarray(x))
  y, state = bn.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
  first, mean0, var0 = numpy_torch_batchnorm(x[:4], np.zeros(4), np.ones(4))
  second, mean1, var1 = numpy_torch_batchnorm(x[4:], np.zeros(4), np.ones(4))
  np.testing.assert_allclose(np.asarray(y), np.concatenate([first, second]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["mean"], (mean0 + mean1) / 2, rtol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["var"], (var0 + var1) / 2, rtol=1e-5)
  with pytest.raises(ValueError, match="batch of 8 examples does not split into groups of 3"):
    layers.BatchNorm(use_running_average=False, group_size=3).init(jax.random.key(0), x)


class NormThenAttention(nn.Module):
  """A BatchNorm followed by an attention block: fused through `gate` (as the ResNet blocks do)
  or applied one after the other."""
  attention: type
  fused: bool
  train: bool
  group_size: int | None = None

  @nn.compact
  def __call__(self, x):
    norm = layers.BatchNorm(use_running_average=not self.train, group_size=self.group_size,
                            name="bn")
    block = self.attention(name="attention")
    return norm(x, gate=block.gate) if self.fused else block(norm(x))


@pytest.mark.parametrize("attention", [
    functools.partial(attention_lib.LCT, groups=4),
    functools.partial(attention_lib.SE, reduction=2),
    functools.partial(attention_lib.SE, reduction=2, use_norm=True, groups=4)],
    ids=["lct", "se", "se_norm"])
@pytest.mark.parametrize("train,group_size", [(True, None), (True, 2), (False, None)])
def test_batchnorm_gate_equals_the_attention_block_on_its_output(attention, train, group_size):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(4, 5, 5, 16)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  separate, fused = (NormThenAttention(attention, fused, train, group_size)
                     for fused in (False, True))
  variables = separate.init(jax.random.key(0), x)
  # Parameters and statistics away from their initial values, so every term matters.
  shift = lambda v, low, high: v + jnp.asarray(rng.uniform(low, high, v.shape), jnp.float32)
  variables = {"params": jax.tree.map(lambda v: shift(v, -0.5, 0.5), variables["params"]),
               "batch_stats": jax.tree.map(lambda v: shift(v, 0.5, 1.0), variables["batch_stats"])}

  def loss(model, params, x):
    y, state = model.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    return jnp.sum(y * cotangent), (y, state)

  results = [jax.grad(functools.partial(loss, model), argnums=(0, 1), has_aux=True)(
      variables["params"], x) for model in (separate, fused)]
  (grads_separate, (y_separate, state_separate)), (grads_fused, (y_fused, state_fused)) = results
  np.testing.assert_allclose(y_fused, y_separate, rtol=1e-5, atol=1e-5)
  assert jnp.max(jnp.abs(y_separate)) > 0.1
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4)
  jax.tree.map(close, state_fused, state_separate)
  jax.tree.map(close, grads_fused, grads_separate)
  # The attention's parameters and the input get non-trivial gradients through both paths.
  assert all(jnp.max(jnp.abs(g)) > 1e-3 for g in jax.tree.leaves(grads_separate[0]["attention"]))
  assert jnp.max(jnp.abs(grads_separate[1])) > 1e-3


def test_materialized_cotangent_keeps_gradients_and_computes_the_chain_behind_them_once():
  """A context gradient read by two full-size loops: with `materialized_cotangent` on the context,
  XLA computes the gate-like chain's backward (4 cosines) once instead of inside each loop; the
  gradient is bitwise the same."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 8, 8, 16)), jnp.float32)

  def input_gradient_twice(materialize, x):
    def loss(x):
      context = jnp.mean(x, axis=(1, 2))
      if materialize:
        context = layers.materialized_cotangent(context)
      gate = context
      for _ in range(4):
        gate = jnp.sin(gate) * 1.5 + gate
      return jnp.sum(x * gate[:, None, None, :] * x)
    dx = jax.grad(loss)(x)
    return dx * 2.0, jnp.transpose(dx, (3, 1, 2, 0))

  results = {}
  for materialize in (False, True):
    fn = jax.jit(functools.partial(input_gradient_twice, materialize))
    results[materialize] = (fn.lower(x).compile().as_text().count(" cosine("), fn(x))
  assert results[False][0] == 8 and results[True][0] == 4
  jax.tree.map(np.testing.assert_array_equal, results[True][1], results[False][1])


def test_invalid_model_settings_raise_clear_errors():
  with pytest.raises(ValueError, match="unknown model 'resnet20'"):
    models.create_model("resnet20")
  with pytest.raises(ValueError, match="unknown attention 'cbam'"):
    models.create_model("resnet50", attention="cbam")
  with pytest.raises(ValueError, match=r"LCT: 64 channels in 64 groups leave 1 channel per group"):
    abstract_variables(models.create_model("resnet18", attention="lct"))
  with pytest.raises(ValueError, match=r"LCT: 48 groups do not divide 256 channels"):
    abstract_variables(models.create_model("resnet50", attention="lct", groups=48))
  with pytest.raises(ValueError, match=r"SE: reduction 512 leaves 0 hidden units for 256"):
    abstract_variables(models.create_model("resnet50", attention="se", reduction=512))
