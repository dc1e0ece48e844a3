"""PyTorch interop: exact round trips, torchvision/timm names and shapes, and our NHWC forward
against an independent NumPy (NCHW, float64) transcription of torchvision's eval-mode ResNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from lct_flax import interop
from lct_flax import models

DEPTHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
ATTENTIONS = ["none", "se", "se_norm", "lct"]
# torchvision's ResNet definitions: blocks per stage, bottleneck (expansion 4) or basic blocks.
TORCHVISION_LAYERS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
                      "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True),
                      "resnet152": ((3, 8, 36, 3), True)}
# Narrow test models: 8 or 16 stem channels, so groups=4 leaves >= 2 channels per group.
TINY_OPTIONS = {"none": {}, "se": {"reduction": 4}, "se_norm": {"reduction": 4, "groups": 4},
                "lct": {"groups": 4}}


def torch_resnet_shapes(depth, *, base=64, attention="none", reduction=16, stem_kernel=7,
                        num_classes=1000):
  """Name -> shape of torchvision's `resnet*` state dict (timm's `seresnet*` with SE, plus
  `lct.w`/`lct.b` with LCT), written from torchvision's model definition."""
  stages, bottleneck = TORCHVISION_LAYERS[depth]
  shapes = {}

  def conv(name, out, inp, k):
    shapes[f"{name}.weight"] = (out, inp, k, k)

  def bn(name, c):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.{leaf}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()

  conv("conv1", base, 3, stem_kernel)
  bn("bn1", base)
  inplanes = base
  for i, blocks in enumerate(stages):
    planes = base * 2**i
    out = planes * (4 if bottleneck else 1)
    for j in range(blocks):
      p = f"layer{i + 1}.{j}"
      if bottleneck:
        conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
        conv(f"{p}.conv3", out, planes, 1), bn(f"{p}.bn3", out)
      else:
        conv(f"{p}.conv1", planes, inplanes, 3), bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
      if attention in ("se", "se_norm"):
        conv(f"{p}.se.fc1", out // reduction, out, 1)
        shapes[f"{p}.se.fc1.bias"] = (out // reduction,)
        conv(f"{p}.se.fc2", out, out // reduction, 1)
        shapes[f"{p}.se.fc2.bias"] = (out,)
      elif attention == "lct":
        shapes[f"{p}.lct.w"] = shapes[f"{p}.lct.b"] = (out,)
      if j == 0 and (i > 0 or inplanes != out):
        conv(f"{p}.downsample.0", out, inplanes, 1), bn(f"{p}.downsample.1", out)
      inplanes = out
  shapes["fc.weight"] = (num_classes, inplanes)
  shapes["fc.bias"] = (num_classes,)
  return shapes


def random_state_dict(shapes, seed=0):
  """Random torch-layout values: He-scaled weights, random BN affine and running statistics
  (positive variances), random LCT w and b, and a nonzero num_batches_tracked."""
  rng = np.random.default_rng(seed)
  state_dict = {}
  for name, shape in shapes.items():
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
      state_dict[name] = np.array(7, np.int64)
      continue
    if leaf == "weight" and len(shape) > 1:  # convolutions (incl. SE's 1x1) and fc
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif leaf in ("weight", "running_var"):  # the 1-d weights are BatchNorm scales
      value = rng.uniform(0.5, 1.5, shape)
    else:  # biases, running means, LCT w and b
      value = rng.standard_normal(shape) * (1.0 if ".lct." in name else 0.2)
    state_dict[name] = value.astype(np.float32)
  return state_dict


def _conv(x, w, stride=1, padding=0):
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
  return np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def _bn(sd, name, x, eps=1e-5):
  mean, var, gamma, beta = (sd[f"{name}.{k}"][:, None, None]
                            for k in ("running_mean", "running_var", "weight", "bias"))
  return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def _attention(sd, p, y, lct_groups, eps=1e-5):
  z = y.mean(axis=(2, 3))
  if f"{p}.se.fc1.weight" in sd:  # timm SEModule: 1x1 convs with biases on the pooled context
    h = np.maximum(z @ sd[f"{p}.se.fc1.weight"][:, :, 0, 0].T + sd[f"{p}.se.fc1.bias"], 0)
    a = h @ sd[f"{p}.se.fc2.weight"][:, :, 0, 0].T + sd[f"{p}.se.fc2.bias"]
  elif f"{p}.lct.w" in sd:  # eqs. (2)-(4): contiguous groups, biased variance, eps in the sqrt
    n, c = z.shape
    g = z.reshape(n, lct_groups, c // lct_groups)
    mu = g.mean(axis=-1, keepdims=True)
    sigma = np.sqrt(((g - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    a = sd[f"{p}.lct.w"] * ((g - mu) / sigma).reshape(n, c) + sd[f"{p}.lct.b"]
  else:
    return y
  return y * _sigmoid(a)[:, :, None, None]  # eq. (5)


def numpy_resnet_forward(state_dict, x_nchw, *, small_stem=False, lct_groups=None):
  """torchvision ResNet v1.5 eval-mode logits from torch-layout arrays, in float64 NumPy.

  Stem 7x7/2 pad 3 + BN + ReLU + 3x3/2 max-pool pad 1 (3x3/1 pad 1, no pool, if `small_stem`);
  basic or bottleneck blocks (stride on the 3x3 conv, 1x1 conv + BN downsample); SE (timm) or
  LCT attention after the block's last BN, before the residual add; global average pool; fc.
  """
  sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
  relu = lambda t: np.maximum(t, 0)
  x = np.asarray(x_nchw, np.float64)
  if small_stem:
    x = relu(_bn(sd, "bn1", _conv(x, sd["conv1.weight"], 1, 1)))
  else:
    x = relu(_bn(sd, "bn1", _conv(x, sd["conv1.weight"], 2, 3)))
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    x = sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))
  for stage in range(1, 5):
    index = 0
    while f"layer{stage}.{index}.conv1.weight" in sd:
      p = f"layer{stage}.{index}"
      stride = 2 if stage > 1 and index == 0 else 1
      if f"{p}.conv3.weight" in sd:
        y = relu(_bn(sd, f"{p}.bn1", _conv(x, sd[f"{p}.conv1.weight"])))
        y = relu(_bn(sd, f"{p}.bn2", _conv(y, sd[f"{p}.conv2.weight"], stride, 1)))
        y = _bn(sd, f"{p}.bn3", _conv(y, sd[f"{p}.conv3.weight"]))
      else:
        y = relu(_bn(sd, f"{p}.bn1", _conv(x, sd[f"{p}.conv1.weight"], stride, 1)))
        y = _bn(sd, f"{p}.bn2", _conv(y, sd[f"{p}.conv2.weight"], 1, 1))
      y = _attention(sd, p, y, lct_groups)
      if f"{p}.downsample.0.weight" in sd:
        x = _bn(sd, f"{p}.downsample.1", _conv(x, sd[f"{p}.downsample.0.weight"], stride))
      x = relu(x + y)
      index += 1
  return x.mean(axis=(2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]


def tiny_model(depth, attention, width=0.125, small_stem=False):
  return models.create_model(depth, attention=attention, num_classes=10, width=width,
                             small_stem=small_stem, **TINY_OPTIONS[attention])


def random_variables(model, seed=0):
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype == np.float32 and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_round_trip_is_exact_with_torchvision_names(depth, attention):
  model = tiny_model(depth, attention)
  variables = random_variables(model)
  state_dict = interop.to_torch_state_dict(variables)
  expected = torch_resnet_shapes(depth, base=8, attention=attention, reduction=4, num_classes=10)
  assert {k: v.shape for k, v in state_dict.items()} == expected
  loaded = interop.load_torch_state_dict(model, state_dict)
  assert_trees_equal(loaded, variables)
  again = interop.to_torch_state_dict(loaded)
  assert again.keys() == state_dict.keys()
  for name, value in state_dict.items():
    assert again[name].dtype == value.dtype
    np.testing.assert_array_equal(again[name], value)


@pytest.mark.parametrize("attention,count", [("none", 320), ("se", 320 + 16 * 4),
                                             ("lct", 320 + 16 * 2)])
def test_full_size_resnet50_matches_torchvision_and_timm_names(attention, count):
  model = models.create_model("resnet50", attention=attention)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  state_dict = interop.to_torch_state_dict(
      jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract))
  assert len(state_dict) == count
  assert {k: v.shape for k, v in state_dict.items()} == torch_resnet_shapes(
      "resnet50", attention=attention)
  assert state_dict["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
  assert state_dict["fc.weight"].shape == (1000, 2048)
  assert state_dict["layer4.2.bn3.running_var"].shape == (2048,)
  assert state_dict["conv1.weight"].shape == (64, 3, 7, 7)
  nbt = state_dict["layer3.5.bn2.num_batches_tracked"]
  assert nbt.shape == () and nbt.dtype == np.int64 and nbt == 0
  if attention == "se":
    assert state_dict["layer3.0.se.fc1.weight"].shape == (64, 1024, 1, 1)
    assert state_dict["layer3.0.se.fc2.bias"].shape == (1024,)
  assert all(v.flags.c_contiguous and v.flags.writeable for v in state_dict.values())


def test_layouts_are_transposed_as_torch_stores_them():
  variables = random_variables(tiny_model("resnet50", "se"))
  sd = interop.to_torch_state_dict(variables)
  params = variables["params"]
  np.testing.assert_array_equal(sd["layer2.0.conv2.weight"],
                                params["layer2_0"]["conv2"]["kernel"].transpose(3, 2, 0, 1))
  np.testing.assert_array_equal(sd["fc.weight"], params["fc"]["kernel"].T)
  np.testing.assert_array_equal(sd["layer1.1.se.fc1.weight"][:, :, 0, 0],
                                params["layer1_1"]["se"]["fc1"]["kernel"].T)
  np.testing.assert_array_equal(sd["layer1.0.downsample.1.running_var"],
                                variables["batch_stats"]["layer1_0"]["downsample_bn"]["var"])
  np.testing.assert_array_equal(sd["bn1.weight"], params["bn1"]["scale"])


FORWARD_CASES = [(depth, attention, False) for depth in ("resnet18", "resnet50")
                 for attention in ("none", "se", "lct")] + [("resnet50", "lct", True)]


@pytest.mark.parametrize("depth,attention,small_stem", FORWARD_CASES)
def test_forward_matches_numpy_torchvision_reference(depth, attention, small_stem):
  model = tiny_model(depth, attention, width=0.25, small_stem=small_stem)
  state_dict = random_state_dict(torch_resnet_shapes(
      depth, base=16, attention=attention, reduction=4, stem_kernel=3 if small_stem else 7,
      num_classes=10))
  variables = interop.load_torch_state_dict(model, state_dict)
  x = np.random.default_rng(1).standard_normal((2, 3, 40, 40)).astype(np.float32)
  ours = np.asarray(model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False))
  reference = numpy_resnet_forward(state_dict, x, small_stem=small_stem, lct_groups=4)
  assert np.abs(reference).max() > 1e-2  # a meaningful comparison, not two zero vectors
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@pytest.fixture
def tiny():
  model = tiny_model("resnet18", "lct")
  variables = random_variables(model)
  return model, variables, interop.to_torch_state_dict(variables)


@pytest.mark.parametrize("strict", [True, False])
def test_missing_key_raises(tiny, strict):
  model, _, state_dict = tiny
  del state_dict["layer2.0.bn1.running_var"]
  with pytest.raises(ValueError, match=r"1 missing key\(s\): layer2\.0\.bn1\.running_var"):
    interop.load_torch_state_dict(model, state_dict, strict=strict)


def test_many_missing_keys_are_counted(tiny):
  model, _, state_dict = tiny
  with pytest.raises(ValueError, match=r"missing key\(s\): .*\(\d+ more\)"):
    interop.load_torch_state_dict(model, {"fc.bias": state_dict["fc.bias"]})


def test_unexpected_key_raises_when_strict_and_warns_otherwise(tiny, caplog):
  model, variables, state_dict = tiny
  state_dict["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"1 unexpected key\(s\): layer9\.0\.conv1\.weight"):
    interop.load_torch_state_dict(model, state_dict)
  loaded = interop.load_torch_state_dict(model, state_dict, strict=False)
  assert "layer9.0.conv1.weight" in caplog.text
  assert_trees_equal(loaded, variables)


@pytest.mark.parametrize("strict", [True, False])
def test_wrong_shape_raises_with_both_shapes(tiny, strict):
  model, _, state_dict = tiny
  state_dict["fc.weight"] = state_dict["fc.weight"].T
  with pytest.raises(ValueError,
                     match=r"fc\.weight has shape \(64, 10\), the model needs \(10, 64\)"):
    interop.load_torch_state_dict(model, state_dict, strict=strict)


def test_num_batches_tracked_is_optional_and_ignored(tiny):
  model, variables, state_dict = tiny
  state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  assert_trees_equal(interop.load_torch_state_dict(model, state_dict), variables)


def test_accepts_torch_tensors():
  torch = pytest.importorskip("torch")
  model = tiny_model("resnet50", "se")
  variables = random_variables(model)
  state_dict = {k: torch.from_numpy(v) for k, v in interop.to_torch_state_dict(variables).items()}
  assert_trees_equal(interop.load_torch_state_dict(model, state_dict), variables)
  state_dict["fc.weight"] = state_dict["fc.weight"].to(torch.bfloat16)
  loaded = interop.load_torch_state_dict(model, state_dict)
  assert loaded["params"]["fc"]["kernel"].dtype == jnp.float32
