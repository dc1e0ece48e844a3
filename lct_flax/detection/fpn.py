"""Feature Pyramid Network (Lin et al., CVPR 2017) neck over the ResNet's C2-C5, as in mmdetection
v1.0 (mmdet/models/necks/fpn.py, `num_outs=5`, `add_extra_convs=False`) and torchvision
(ops/feature_pyramid_network.py with `LastLevelMaxPool`).

P_l = conv3x3(lateral_l), lateral_l = conv1x1(C_l) + nearest-upsampled lateral_{l+1} (top-down);
P6 = P5 subsampled by 2 (a max-pool with kernel 1 and stride 2). Every output has `channels`
(256) channels. NHWC; on canvases that are multiples of 32 every upsampling doubles exactly, as
both references assume.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# mmdet v1 initialises every FPN convolution with xavier_init(distribution="uniform"), bias 0.
xavier_uniform = nn.initializers.xavier_uniform()


def upsample_nearest(x: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Nearest-neighbour resize of NHWC `x` to spatial `shape` (torch's F.interpolate
  mode="nearest": source index floor(i * in / out))."""
  rows = (jnp.arange(shape[0]) * x.shape[1]) // shape[0]
  cols = (jnp.arange(shape[1]) * x.shape[2]) // shape[1]
  return x[:, rows][:, :, cols]


class FPN(nn.Module):
  """C2..C5 (any channel counts) -> P2..P6, `channels` each, compute dtype `dtype`."""
  channels: int = 256
  extra_levels: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
    conv = functools.partial(nn.Conv, self.channels, use_bias=True, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=xavier_uniform)
    laterals = [conv((1, 1), name=f"lateral_{i}")(c) for i, c in enumerate(features)]
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + upsample_nearest(laterals[i], laterals[i - 1].shape[1:3])
    outputs = [conv((3, 3), padding=1, name=f"output_{i}")(x) for i, x in enumerate(laterals)]
    for _ in range(self.extra_levels):
      outputs.append(outputs[-1][:, ::2, ::2])
    return outputs
