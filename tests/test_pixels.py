"""uint8 batches normalised on the device: the same numbers as the float batches the host used to
normalise, through the training's own jitted train and eval steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lct_flax import input_pipeline
from lct_flax import models
from lct_flax import pixels
from lct_flax import classifier_steps
from lct_flax import train_state

MEAN = input_pipeline.IMAGENET_MEAN_RGB
STD = input_pipeline.IMAGENET_STDDEV_RGB


def host_normalized(images):
  """What the input pipeline used to send: (x - mean) / std in float32, computed on the host."""
  return (images.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)


def test_normalize_is_the_host_formula_and_leaves_float_images_alone():
  images = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
  normalized = jax.jit(functools.partial(pixels.normalize, mean=MEAN, std=STD))(images)
  assert normalized.dtype == np.float32
  # XLA divides by multiplying with the reciprocal: within one unit in the last place.
  np.testing.assert_array_max_ulp(np.asarray(normalized), host_normalized(images), maxulp=1)
  floats = host_normalized(images)
  assert pixels.normalize(floats, MEAN, STD) is floats
  with pytest.raises(ValueError, match="mean and std"):
    pixels.normalize(images, None, None)


@pytest.fixture(scope="module")
def tiny_state():
  """A small LCT-ResNet-18, SGD with momentum, its initial TrainState (16 px inputs)."""
  model = models.create_model("resnet18", attention="lct", num_classes=10, width=0.125,
                              small_stem=True, groups=4)
  optimizer = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  state = jax.jit(lambda: train_state.TrainState.create(
      model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False), optimizer,
      jax.random.PRNGKey(1)))()
  return model, optimizer, state


def test_train_step_on_uint8_equals_the_float_input_step(tiny_state):
  model, optimizer, state = tiny_state
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  def step(**normalisation):
    loss_fn = functools.partial(classifier_steps.loss, model=model, label_smoothing=0.1,
                                **normalisation)
    return jax.jit(functools.partial(train_state.train_step, loss_fn=loss_fn,
                                     optimizer=optimizer))

  on_device, on_host = step(mean=MEAN, std=STD), step()
  state_u8, metrics_u8 = on_device(state, {"image": images, "label": labels})
  state_f32, metrics_f32 = on_host(state, {"image": host_normalized(images), "label": labels})
  state_u8, metrics_u8 = on_device(state_u8, {"image": images[::-1], "label": labels[::-1]})
  state_f32, metrics_f32 = on_host(
      state_f32, {"image": host_normalized(images[::-1]), "label": labels[::-1]})
  assert float(metrics_u8["loss"]) > 0 and np.any(state_u8.params["fc"]["kernel"] !=
                                                   state.params["fc"]["kernel"])
  # The normalised inputs differ by at most one ulp (above) and XLA fuses the normalisation into
  # the first convolution, which reorders float32 sums; BatchNorm over 8 tiny images amplifies
  # that. After two steps the largest difference seen in a leaf is 3e-6 of the leaf's largest
  # magnitude at LLVM's default level and 1e-5 at the suite's (an AMD CPU); a normalisation
  # with the channels' mean and std reversed, or without the std, moves some parameter by 0.7-1.3
  # of its largest magnitude. So 1e-3 of it: far above rounding, far below a wrong normalisation.
  leaves = zip(jax.tree_util.tree_leaves_with_path((state_u8, metrics_u8)),
               jax.tree.leaves((state_f32, metrics_f32)))
  for (path, got), want in leaves:
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max(),
                               err_msg=jax.tree_util.keystr(path))


def test_eval_step_on_uint8_equals_the_float_input_step(tiny_state):
  model, _, state = tiny_state
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
  batch = {"label": rng.integers(0, 10, 6).astype(np.int32),
           "mask": np.array([True] * 5 + [False])}
  got = jax.jit(functools.partial(classifier_steps.eval_step, model=model, mean=MEAN, std=STD))(
      state.variables, {**batch, "image": images})
  want = jax.jit(functools.partial(classifier_steps.eval_step, model=model))(
      state.variables, {**batch, "image": host_normalized(images)})
  assert float(got["count"]) == 5
  # Rounding moves the summed loss by 2e-7 of itself here; a normalisation with the channels
  # reversed moves it by 1.5e-2 of itself, one without the std by 7x.
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=key)
