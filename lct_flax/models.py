"""ResNet v1.5 (torchvision layout) with a channel-attention block in every residual block.

As in torchvision's ResNet, which the paper builds on: the stride sits on the 3x3 convolution of
the bottleneck; padding is explicit and symmetric (3 on the 7x7 stem, 1 on 3x3 convolutions and
on the 3x3/2 max-pool); BatchNorm has epsilon 1e-5 and momentum 0.1 in PyTorch terms; convolutions
get He fan-out normal init. The attention block sits after the last BatchNorm of each residual
block, on its output channels, before the residual addition (what makes LCT-ResNet-50 25.59M
parameters in Table 1). Inputs are NHWC.

For dense prediction (FPN necks) `model(x, features_only=True)` returns the outputs of the four
stages, C2-C5 (strides 4, 8, 16, 32 with the standard stem), and computes no classifier. For
fine-tuning, `frozen_stages`, `norm_eval` and `frozen_bn` put BatchNorm layers in inference mode
during training, as mmdetection's ResNet does (`lct_flax.freezing` keeps the frozen parameters
unchanged).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
from flax.core import FrozenDict

from lct_flax import attention as attention_lib
from lct_flax import blocks
from lct_flax import layers

STAGE_SIZES = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
BOTTLENECK = {"resnet18": False, "resnet34": False, "resnet50": True, "resnet101": True,
              "resnet152": True}
# The stage outputs `features_only` returns, by stage (layer1..layer4), as mmdetection names them.
FEATURE_NAMES = ("c2", "c3", "c4", "c5")


class ResidualBlock(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block with optional attention."""
  planes: int
  stride: int
  bottleneck: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  attention: Optional[Callable[..., nn.Module]] = None
  attention_name: str = "attention"
  zero_init_last_bn: bool = False

  @nn.compact
  def __call__(self, x):
    out_channels = self.planes * (4 if self.bottleneck else 1)
    last_bn_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    if self.bottleneck:
      y = self.conv(self.planes, (1, 1), name="conv1")(x)
      y = layers.ReLU(name="relu1")(self.norm(name="bn1")(y))
      y = self.conv(self.planes, (3, 3), strides=self.stride, padding=1, name="conv2")(y)
      y = layers.ReLU(name="relu2")(self.norm(name="bn2")(y))
      y = self.conv(out_channels, (1, 1), name="conv3")(y)
      y = self.norm(scale_init=last_bn_init, name="bn3")(y, gate=self._attention_gate())
    else:
      y = self.conv(self.planes, (3, 3), strides=self.stride, padding=1, name="conv1")(x)
      y = layers.ReLU(name="relu1")(self.norm(name="bn1")(y))
      y = self.conv(out_channels, (3, 3), padding=1, name="conv2")(y)
      y = self.norm(scale_init=last_bn_init, name="bn2")(y, gate=self._attention_gate())
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_channels:
      shortcut = self.conv(out_channels, (1, 1), strides=self.stride, name="downsample_conv")(x)
      shortcut = self.norm(name="downsample_bn")(shortcut)
    return layers.ReLU(name="relu_out")(shortcut + y)

  def _attention_gate(self):
    """The attention block's gate, which the last BatchNorm applies (see `layers.BatchNorm`)."""
    return None if self.attention is None else self.attention(name=self.attention_name).gate


class ResNet(nn.Module):
  """ResNet v1.5. Parameters are float32; `dtype` is the compute dtype (e.g. bfloat16).

  `width` scales every channel count (64 * width in the stem; for tiny test models), and
  `small_stem` swaps the 7x7/2 stem and max-pool for a 3x3/1 convolution (32x32 inputs).
  `bn_group_size` gives BatchNorm statistics over groups of that many examples (None: the whole
  global batch).

  `frozen_stages` (mmdetection's meaning: -1 none, 0 the stem, s the stem and layer1..layer s),
  `norm_eval` (every BatchNorm: mmdetection's `norm_eval=True`, whose BatchNorm scale and bias
  still train) and `frozen_bn` (every BatchNorm, with its scale and bias frozen by
  `lct_flax.freezing`) make those BatchNorm layers normalise with their running statistics and
  leave them unchanged when `train=True`, as PyTorch modules in `eval()` mode do.
  """
  stage_sizes: Sequence[int]
  bottleneck: bool
  num_classes: int = 1000
  attention: Optional[str] = None
  attention_kwargs: Mapping[str, Any] = FrozenDict()
  width: float = 1.0
  small_stem: bool = False
  zero_init_last_bn: bool = False
  bn_group_size: Optional[int] = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  frozen_stages: int = -1
  norm_eval: bool = False
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    """Logits (N, num_classes), float32; with `features_only`, {"c2": ..., "c5": ...} instead:
    the NHWC outputs of layer1..layer4 in the compute dtype, without pooling or classifier."""
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=layers.he_fan_out_normal)

    def norm_of_stage(stage: int):
      """BatchNorm of stage `stage` (0: the stem), in inference mode where frozen."""
      frozen = self.frozen_bn or self.norm_eval or stage <= self.frozen_stages
      return functools.partial(layers.BatchNorm, use_running_average=not train or frozen,
                               momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                               group_size=self.bn_group_size, dtype=self.dtype)

    attention = attention_lib.attention_factory(self.attention, **self.attention_kwargs)
    block = blocks.get(self.attention)
    attention_name = block.module_name if block else "attention"
    base = int(round(64 * self.width))

    x = x.astype(self.dtype)
    if self.small_stem:
      x = conv(base, (3, 3), padding=1, name="conv1")(x)
    else:
      x = conv(base, (7, 7), strides=2, padding=3, name="conv1")(x)
    x = layers.ReLU(name="relu")(norm_of_stage(0)(name="bn1")(x))
    if not self.small_stem:
      x = layers.MaxPool(name="maxpool")(x)
    features = {}
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        x = ResidualBlock(
            planes=base * 2**stage, stride=2 if stage > 0 and index == 0 else 1,
            bottleneck=self.bottleneck, conv=conv, norm=norm_of_stage(stage + 1),
            attention=attention, attention_name=attention_name,
            zero_init_last_bn=self.zero_init_last_bn, name=f"layer{stage + 1}_{index}")(x)
      features[FEATURE_NAMES[stage]] = x
    if features_only:
      return features
    x = layers.GlobalAvgPool(name="avgpool")(x)
    fan_in = x.shape[-1]
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=layers.torch_linear_kernel,
                 bias_init=layers.torch_linear_bias(fan_in), name="fc")(x)
    return x.astype(jnp.float32)


def create_model(name: str, *, attention: Optional[str] = None, num_classes: int = 1000,
                 dtype: Any = jnp.float32, width: float = 1.0, small_stem: bool = False,
                 zero_init_last_bn: bool = False, bn_group_size: Optional[int] = None,
                 frozen_stages: int = -1, norm_eval: bool = False, frozen_bn: bool = False,
                 **attention_kwargs) -> ResNet:
  """Builds `name` (resnet18|34|50|101|152) with `attention` (None|"none"|"se"|"se_norm"|"lct").

  `attention_kwargs` go to the attention block (e.g. `groups=32`, `w_init=1.0` for LCT,
  `reduction=8` for SE). Unknown names and options raise ValueError here; group and reduction
  settings that do not fit a block's channels raise ValueError at `init`.
  """
  if name not in STAGE_SIZES:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(STAGE_SIZES)}.")
  attention_lib.attention_factory(attention, **attention_kwargs)  # validates name and options
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}.")
  if not -1 <= frozen_stages <= len(STAGE_SIZES[name]):
    raise ValueError(f"frozen_stages must be in [-1, {len(STAGE_SIZES[name])}] (-1: none, 0: the "
                     f"stem, s: the stem and layer1..layer s), got {frozen_stages}.")
  return ResNet(stage_sizes=STAGE_SIZES[name], bottleneck=BOTTLENECK[name],
                num_classes=num_classes, attention=None if attention == "none" else attention,
                attention_kwargs=FrozenDict(attention_kwargs), width=width,
                small_stem=small_stem, zero_init_last_bn=zero_init_last_bn,
                bn_group_size=bn_group_size, frozen_stages=frozen_stages, norm_eval=norm_eval,
                frozen_bn=frozen_bn, dtype=dtype)
