"""The R-CNN box head of an FPN detector: two shared fully connected layers over each RoI's 7x7
features, then class logits and box deltas (mmdetection v1.0 SharedFCBBoxHead,
mmdet/models/bbox_heads/convfc_bbox_head.py; torchvision TwoMLPHead + FastRCNNPredictor).

fc1, fc2: 1024 units + ReLU, xavier-uniform initialised (mmdet v1); `cls`: K + 1 logits with the
background at index 0, N(0, 0.01^2); `reg`: 4 deltas per class including the background
(`class_agnostic=False`, Faster R-CNN) or one shared set (`class_agnostic=True`, every Cascade
R-CNN stage), N(0, 0.001^2); biases 0. RoI features arrive NHWC (R, 7, 7, C) and are flattened in
that order: torch flattens (C, 7, 7), which `lct_flax.detection.interop` accounts for.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BoxHead(nn.Module):
  """(N, R, 7, 7, C) RoI features -> class logits (N, R, K + 1) and deltas (N, R, K + 1 or 1, 4),
  float32."""
  num_classes: int                 # K foreground classes
  class_agnostic: bool = False
  hidden: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, roi_features: jax.Array) -> tuple[jax.Array, jax.Array]:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                              bias_init=nn.initializers.zeros)
    n, r = roi_features.shape[:2]
    x = roi_features.reshape(n, r, -1)
    x = nn.relu(dense(self.hidden, kernel_init=nn.initializers.xavier_uniform(), name="fc1")(x))
    x = nn.relu(dense(self.hidden, kernel_init=nn.initializers.xavier_uniform(), name="fc2")(x))
    logits = dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01), name="cls")(x)
    sets = 1 if self.class_agnostic else self.num_classes + 1
    deltas = dense(4 * sets, kernel_init=nn.initializers.normal(0.001), name="reg")(x)
    return logits.astype(jnp.float32), deltas.astype(jnp.float32).reshape(n, r, sets, 4)
