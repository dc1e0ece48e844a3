"""PyTorch state dicts in and out: torchvision `resnet*`, timm `seresnet*`, and our LCT-ResNets.

Torch names follow torchvision (`conv1.weight`, `bn1.running_var`, `layer3.5.conv2.weight`,
`layer1.0.downsample.0.weight`, `layer1.0.downsample.1.bias`, `fc.weight`), timm's SE-ResNet for
SE blocks (`layer1.0.se.fc1.weight`, 1x1 convolutions with biases) and, for LCT, the block's own
parameters under `layer1.0.lct.w` / `layer1.0.lct.b`, shape (C,). One function, `torch_name`,
maps a flax variable path to its torch name and layout; both directions use it.

Layouts: convolution kernels are HWIO in flax and OIHW in torch; Dense kernels (in, out) are
torch Linear weights (out, in); SE's Dense kernels (in, out) are timm's 1x1 conv weights
(out, in, 1, 1). BatchNorm `scale`/`bias`/`mean`/`var` are torch's `weight`/`bias`/
`running_mean`/`running_var` with the same meaning (layers.BatchNorm has PyTorch semantics).

timm's seresnet50/101/152 fit `SE(reduction=16)` exactly. timm rounds SE hidden widths to a
multiple of 8 (at least 8), so its seresnet18/34 (8 hidden units for 64 channels, not 4) fit no
uniform reduction and are refused with a shape mismatch.

Nothing here imports torch: state dicts may hold torch tensors or NumPy arrays.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

# Flax module names that torch spells differently (module paths are joined with ".").
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
# (collection, flax leaf name) -> torch leaf name.
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("params", "w"): "w",
    ("params", "b"): "b",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_BLOCK = re.compile(r"layer(\d+)_(\d+)")
_NUM_BATCHES_TRACKED = "num_batches_tracked"


def torch_name(path: tuple[str, ...], ndim: int) -> tuple[str, str]:
  """Torch name and layout of the flax variable at `path` = (collection, module..., leaf).

  `ndim` is the flax array's rank. Layouts: "conv" (HWIO <-> OIHW), "se_conv" (Dense (in, out)
  <-> 1x1 conv (out, in, 1, 1)), "linear" (Dense (in, out) <-> Linear (out, in)) and "same".
  E.g. ("params", "layer1_0", "downsample_conv", "kernel"), 4 -> ("layer1.0.downsample.0.weight",
  "conv").
  """
  collection, *modules, leaf = path
  if (collection, leaf) not in _LEAF_NAMES or not modules:
    raise ValueError(f"no torch name for the flax variable {'/'.join(path)}.")
  parts = [_MODULE_NAMES.get(m, _BLOCK.sub(r"layer\1.\2", m)) for m in modules]
  layout = "same"
  if leaf == "kernel":
    layout = "conv" if ndim == 4 else "se_conv" if "se" in modules else "linear"
  return ".".join(parts + [_LEAF_NAMES[collection, leaf]]), layout


def _to_torch(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "se_conv":
    array, layout = array[None, None], "conv"  # (in, out) -> HWIO with H = W = 1
  if layout == "conv":
    return np.transpose(array, (3, 2, 0, 1))
  return array.T if layout == "linear" else array


def _from_torch(array: np.ndarray, layout: str) -> np.ndarray:
  if layout in ("conv", "se_conv"):
    array = np.transpose(array, (2, 3, 1, 0))
    return array[0, 0] if layout == "se_conv" else array
  return array.T if layout == "linear" else array


def _as_numpy(value: Any) -> np.ndarray:
  """A torch tensor (any device, float dtypes incl. bfloat16 as float32) or array-like as NumPy."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy()
  return np.asarray(value)


def _listing(what: str, names: list[str], shown: int = 5) -> str:
  more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
  return f"{len(names)} {what}: {', '.join(names[:shown])}{more}"


def _abstract_variables(model) -> Any:
  """Shapes and dtypes of `model.init`'s variables, without computing them (jax.eval_shape)."""
  size = 32 if getattr(model, "small_stem", False) else 64
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def load_torch_state_dict(model, state_dict: Mapping[str, Any], *, strict: bool = True) -> dict:
  """Flax variables {"params", "batch_stats"} for `model` from a torch-layout state dict.

  The result has exactly the structure, shapes and dtypes (float32; other float inputs are cast)
  of `model.init`'s, built without running `init` (jax.eval_shape). Every
  model variable must be in `state_dict` with the right shape, else ValueError (listing the
  missing names and every shape mismatch with both shapes). BatchNorm `num_batches_tracked`
  entries are accepted and ignored. Other keys the model does not use raise ValueError with
  `strict=True`, and are logged as a warning and skipped with `strict=False`.
  """
  target = traverse_util.flatten_dict(_abstract_variables(model))
  known = set()
  flat, missing, mismatched = {}, [], []
  for path, spec in target.items():
    name, layout = torch_name(path, len(spec.shape))
    known.add(name)
    if path[0] == "batch_stats":
      known.add(name.rsplit(".", 1)[0] + "." + _NUM_BATCHES_TRACKED)
    if name not in state_dict:
      missing.append(name)
      continue
    value = _as_numpy(state_dict[name])
    expected = _to_torch(np.broadcast_to(np.zeros((), spec.dtype), spec.shape), layout).shape
    if value.shape != expected:
      mismatched.append(f"{name} has shape {value.shape}, the model needs {expected}")
      continue
    flat[path] = jnp.asarray(_from_torch(value, layout), dtype=spec.dtype)
  unexpected = sorted(set(state_dict) - known)
  problems = []
  if missing:
    problems.append(_listing("missing key(s)", missing))
  if mismatched:
    problems.append(_listing("shape mismatch(es)", mismatched))
  if unexpected and strict:
    problems.append(_listing("unexpected key(s)", unexpected))
  if problems:
    raise ValueError("cannot load the torch state dict: " + "; ".join(problems) + ".")
  if unexpected:
    logging.warning("load_torch_state_dict: ignoring %s.", _listing("unexpected key(s)", unexpected))
  return traverse_util.unflatten_dict(flat)


def to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Torch-layout state dict (name -> contiguous, writable NumPy array) of flax `variables`.

  Keys come in the variable tree's order (torch's `load_state_dict` does not depend on it).

  Needs only the variable tree ({"params", "batch_stats"}), not the model. Every BatchNorm also
  gets `num_batches_tracked` = 0 (int64, 0-d), as torch's BatchNorm2d stores it, so that
  torchvision/timm models accept the result with `load_state_dict(strict=True)` (after
  `{k: torch.from_numpy(v) ...}`); the count only matters to torch with `momentum=None`.
  The inverse of `load_torch_state_dict`, exactly.
  """
  state_dict = {}
  for path, leaf in traverse_util.flatten_dict(variables).items():
    leaf = np.asarray(leaf)
    name, layout = torch_name(path, leaf.ndim)
    state_dict[name] = np.array(_to_torch(leaf, layout), order="C")
    if path[0] == "batch_stats" and path[-1] == "mean":
      state_dict[name.rsplit(".", 1)[0] + "." + _NUM_BATCHES_TRACKED] = np.array(0, np.int64)
  return state_dict
