"""Region Proposal Network head (Ren et al., NeurIPS 2015), shared over the FPN levels, as in
mmdetection v1.0 (mmdet/models/anchor_heads/rpn_head.py) and torchvision
(models/detection/rpn.py RPNHead).

conv3x3 (256) + ReLU, then a 1x1 objectness convolution (A logits, sigmoid) and a 1x1 box
convolution (4A deltas); all three initialised N(0, 0.01^2), bias 0 (both references). The
outputs of a level flatten in (H, W, A) order, the order of `anchors.level_anchors`; each
location's 4A box channels are (anchor, coordinate), as both references reshape them.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

normal_001 = nn.initializers.normal(0.01)


class RPNHead(nn.Module):
  """Per level: (N, H, W, C) -> objectness logits (N, H*W*A) and deltas (N, H*W*A, 4), float32."""
  num_anchors: int = 3
  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    conv = functools.partial(nn.Conv, use_bias=True, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=normal_001)
    hidden = conv(self.channels, (3, 3), padding=1, name="conv")
    objectness = conv(self.num_anchors, (1, 1), name="cls")
    boxes = conv(4 * self.num_anchors, (1, 1), name="reg")
    logits, deltas = [], []
    for x in features:
      h = nn.relu(hidden(x))
      n = x.shape[0]
      logits.append(objectness(h).astype(jnp.float32).reshape(n, -1))
      deltas.append(boxes(h).astype(jnp.float32).reshape(n, -1, 4))
    return logits, deltas
