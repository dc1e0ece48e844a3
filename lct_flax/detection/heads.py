"""The R-CNN box and mask heads of an FPN detector: what a stage runs on the features RoIAlign
pools for each RoI (`roi_heads.RoIHeads` takes them as arguments; `head_registry` names them).

`BoxHead` ("shared_2fc", the paper's): two shared fully connected layers over each RoI's 7x7
features, then class logits and box deltas (mmdetection v1.0 SharedFCBBoxHead,
mmdet/models/bbox_heads/convfc_bbox_head.py; torchvision TwoMLPHead + FastRCNNPredictor).
fc1, fc2: `hidden` (1024) units + ReLU, xavier-uniform initialised (mmdet v1); `cls`: K + 1
logits with the background at index 0, N(0, 0.01^2); `reg`: 4 deltas per class including the
background (`class_agnostic=False`, Faster R-CNN) or one shared set (`class_agnostic=True`, every
Cascade R-CNN stage), N(0, 0.001^2); biases 0. RoI features arrive NHWC (R, 7, 7, C) and are
flattened in that order: torch flattens (C, 7, 7), which `lct_flax.detection.interop` accounts for.

`MaskHead` ("fcn", the paper's): Mask R-CNN's FCN over each RoI's 14x14 features (mmdetection v1.0
FCNMaskHead, mmdet/models/mask_heads/fcn_mask_head.py; torchvision MaskRCNNHeads +
MaskRCNNPredictor): four 3x3 convolutions of `hidden` (256) channels + ReLU, a 2x2 stride-2
deconvolution + ReLU, a 1x1 convolution to K + 1 per-class 28x28 mask logits (the background's
channel 0 included, as both references have it). Every weight is kaiming-normal with PyTorch's
"fan_out" (ConvModule's kaiming_init, and init_weights for the deconvolution and the logits),
biases 0.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lct_flax import layers

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


class Deconv2x2(nn.Module):
  """torch's ConvTranspose2d(C, features, 2, stride=2): every input pixel becomes a 2x2 block,
  out[2i + a, 2j + b] = kernel[a, b] @ x[i, j] + bias. The kernel is (2, 2, features, C), the
  layout of flax's ConvTranspose(transpose_kernel=True), to which torch's (C, features, 2, 2)
  weight maps as any convolution's weight does; kaiming_normal_(mode="fan_out") there counts
  C x 4 (PyTorch takes a transposed convolution weight's dimension 0 as its fan-out), which is
  this layout's fan-out too."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", layers.he_fan_out_normal, (2, 2, self.features, x.shape[-1]),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = jnp.einsum("nhwc,aboc->nhawbo", x.astype(self.dtype), kernel.astype(self.dtype))
    n, h, _, w, _, _ = y.shape
    return y.reshape(n, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


class MaskHead(nn.Module):
  """(N, R, 14, 14, C) RoI features -> mask logits (N, R, 28, 28, K + 1), float32."""
  num_classes: int                 # K foreground classes
  num_convs: int = 4
  hidden: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, roi_features: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=True, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=layers.he_fan_out_normal)
    n, r = roi_features.shape[:2]
    x = roi_features.reshape(n * r, *roi_features.shape[2:])
    for i in range(self.num_convs):
      x = nn.relu(conv(self.hidden, (3, 3), padding=1, name=f"conv_{i}")(x))
    x = nn.relu(Deconv2x2(self.hidden, dtype=self.dtype, name="deconv")(x))
    logits = conv(self.num_classes + 1, (1, 1), name="logits")(x).astype(jnp.float32)
    return logits.reshape(n, r, *logits.shape[1:])

