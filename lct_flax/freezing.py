"""Frozen parameters for fine-tuning, with mmdetection's meanings (`frozen_stages`, `norm_eval`).

`frozen_stages`: -1 freezes nothing; 0 the stem (conv1, bn1); s the stem and layer1..layer s (the
paper's detection fine-tuning freezes "c1 and c2": `frozen_stages=1`). `frozen_bn`: the scale and
bias of every BatchNorm. Frozen parameters get no update at all, weight decay included, and the
optimizer keeps no state for them (`optax.multi_transform` with `optax.set_to_zero`); the model
itself keeps the running statistics of those BatchNorm layers unchanged (`models.ResNet`).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

TRAINABLE, FROZEN = "trainable", "frozen"
_STAGE = re.compile(r"layer(\d+)_\d+$")
_STEM = ("conv1", "bn1")


def is_frozen(path: tuple[str, ...], *, frozen_stages: int, frozen_bn: bool,
              batchnorm_modules: frozenset[tuple[str, ...]]) -> bool:
  """Whether the ResNet parameter at `path` (module names..., leaf) is frozen.

  `batchnorm_modules` holds the module paths of the BatchNorm layers.
  """
  top = path[0]
  if top in _STEM and frozen_stages >= 0:
    return True
  stage = _STAGE.match(top)
  if stage and int(stage.group(1)) <= frozen_stages:
    return True
  return frozen_bn and path[:-1] in batchnorm_modules


def parameter_labels(params: Any, *, frozen_stages: int, frozen_bn: bool) -> Any:
  """A pytree like a ResNet's `params` with "trainable" or "frozen" at every leaf.

  BatchNorm layers are the modules with a `scale` parameter (`layers.BatchNorm`; no other layer
  of the ResNets has one).
  """
  flat = traverse_util.flatten_dict(params)
  batchnorm_modules = frozenset(path[:-1] for path in flat if path[-1] == "scale")
  return traverse_util.unflatten_dict({
      path: FROZEN if is_frozen(path, frozen_stages=frozen_stages, frozen_bn=frozen_bn,
                                batchnorm_modules=batchnorm_modules) else TRAINABLE
      for path in flat})


def freezes_anything(frozen_stages: int, frozen_bn: bool) -> bool:
  return frozen_stages >= 0 or frozen_bn


def partition_optimizer(optimizer: optax.GradientTransformation,
                        labels: Any) -> optax.GradientTransformation:
  """`optimizer` on the trainable parameters; frozen ones get zero updates and no state."""
  return optax.multi_transform({TRAINABLE: optimizer, FROZEN: optax.set_to_zero()}, labels)


def zero_frozen(grads: Any, labels: Any) -> Any:
  """Gradients with the frozen parameters' set to zero (so that they are never computed, and the
  gradient norm covers the trained parameters only)."""
  return jax.tree.map(lambda g, label: g if label == TRAINABLE else jnp.zeros_like(g),
                      grads, labels)
