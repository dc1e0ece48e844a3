"""uint8 pixels to model input: the dataset's mean/std normalisation, run on the accelerator.

The input pipeline sends batches of uint8 NHWC pixels (a quarter of float32's bytes, no float work
on the host); the jitted training, eval and analysis steps call `normalize` first, so the model
sees `(pixels - mean) / std` in float32, as torchvision's `ToTensor` + `Normalize` give it. The
models themselves take normalised float images, as before. TensorFlow-free.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean: Optional[Sequence[float]],
              std: Optional[Sequence[float]]) -> jax.Array:
  """`(images - mean) / std` in float32 for integer (uint8) `images`, per RGB channel, `mean` and
  `std` in the pixels' 0..255 scale; floating-point images are taken as normalised already and
  returned unchanged."""
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images
  if mean is None or std is None:
    raise ValueError(f"{images.dtype} images need the dataset's mean and std to be normalised; "
                     f"pass mean= and std= (e.g. the dataset config's).")
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) - mean) / std
