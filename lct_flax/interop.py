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

Files: `read_state_dict_file` / `write_state_dict_file` read and write state dicts as
`.safetensors` (the `safetensors` package's NumPy API; PyTorch users open them with
`safetensors.torch.load_file`) or `.npz` (read without pickle).

Nothing here imports torch: state dicts may hold torch tensors or NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from lct_flax import fileio

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


def as_numpy(value: Any) -> np.ndarray:
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


@dataclasses.dataclass(frozen=True)
class StateDictMatch:
  """How a torch-layout state dict fits a set of flax variables (`match_state_dict`).

  `arrays`: flax path -> array in flax layout and dtype, for every variable the state dict has
  with the right shape. `names`: flax path -> torch name, for every variable. `missing`: torch
  names of variables the state dict lacks. `mismatched`: torch name -> (state dict shape, needed
  shape). `unexpected`: state dict names with no place among the variables (BatchNorm
  `num_batches_tracked` entries of known layers are not counted).
  """
  arrays: dict
  names: dict
  missing: list
  mismatched: dict
  unexpected: list


def match_state_dict(target: Mapping[tuple, Any], state_dict: Mapping[str, Any], *,
                     namer: Callable[[tuple, int], tuple[str, str]] = torch_name
                     ) -> StateDictMatch:
  """Matches `state_dict` against `target` (flat flax path -> array or ShapeDtypeStruct).
  `namer(path, ndim) -> (torch name, layout)` names the variables (default: `torch_name`)."""
  known = set()
  arrays, names, missing, mismatched = {}, {}, [], {}
  for path, spec in target.items():
    name, layout = namer(path, len(spec.shape))
    names[path] = name
    known.add(name)
    if path[0] == "batch_stats":
      known.add(name.rsplit(".", 1)[0] + "." + _NUM_BATCHES_TRACKED)
    if name not in state_dict:
      missing.append(name)
      continue
    value = as_numpy(state_dict[name])
    expected = _to_torch(np.broadcast_to(np.zeros((), spec.dtype), spec.shape), layout).shape
    if value.shape != expected:
      mismatched[name] = (value.shape, expected)
      continue
    arrays[path] = np.asarray(_from_torch(value, layout), dtype=spec.dtype)
  unexpected = sorted(set(state_dict) - known)
  return StateDictMatch(arrays, names, missing, mismatched, unexpected)


def describe_mismatch(name: str, shapes: tuple) -> str:
  return f"{name} has shape {tuple(shapes[0])}, the model needs {tuple(shapes[1])}"


def load_torch_state_dict(model, state_dict: Mapping[str, Any], *, strict: bool = True) -> dict:
  """Flax variables {"params", "batch_stats"} for `model` from a torch-layout state dict.

  The result has exactly the structure, shapes and dtypes (float32; other float inputs are cast)
  of `model.init`'s, built without running `init` (jax.eval_shape). Every
  model variable must be in `state_dict` with the right shape, else ValueError (listing the
  missing names and every shape mismatch with both shapes). BatchNorm `num_batches_tracked`
  entries are accepted and ignored. Other keys the model does not use raise ValueError with
  `strict=True`, and are logged as a warning and skipped with `strict=False`.
  """
  return variables_from_state_dict(traverse_util.flatten_dict(_abstract_variables(model)),
                                   state_dict, strict=strict)


def variables_from_state_dict(target: Mapping[tuple, Any], state_dict: Mapping[str, Any], *,
                              strict: bool = True,
                              namer: Callable[[tuple, int], tuple[str, str]] = torch_name) -> dict:
  """`load_torch_state_dict` for the variables `target` (flat flax path -> ShapeDtypeStruct)
  named by `namer` (see `match_state_dict`): the refusals and the result are the same."""
  match = match_state_dict(target, state_dict, namer=namer)
  problems = []
  if match.missing:
    problems.append(_listing("missing key(s)", match.missing))
  if match.mismatched:
    problems.append(_listing("shape mismatch(es)", [describe_mismatch(n, s)
                                                    for n, s in match.mismatched.items()]))
  if match.unexpected and strict:
    problems.append(_listing("unexpected key(s)", match.unexpected))
  if problems:
    raise ValueError("cannot load the torch state dict: " + "; ".join(problems) + ".")
  if match.unexpected:
    logging.warning("load_torch_state_dict: ignoring %s.",
                    _listing("unexpected key(s)", match.unexpected))
  return traverse_util.unflatten_dict({p: jnp.asarray(a) for p, a in match.arrays.items()})


def to_torch_state_dict(variables: Mapping[str, Any], *,
                        namer: Callable[[tuple, int], tuple[str, str]] = torch_name
                        ) -> dict[str, np.ndarray]:
  """Torch-layout state dict (name -> contiguous, writable NumPy array) of flax `variables`.

  Keys come in the variable tree's order (torch's `load_state_dict` does not depend on it).

  Needs only the variable tree ({"params", "batch_stats"}), not the model. Every BatchNorm also
  gets `num_batches_tracked` = 0 (int64, 0-d), as torch's BatchNorm2d stores it, so that
  torchvision/timm models accept the result with `load_state_dict(strict=True)` (after
  `{k: torch.from_numpy(v) ...}`); the count only matters to torch with `momentum=None`.
  The inverse of `load_torch_state_dict`, exactly. `namer`: as in `match_state_dict`.
  """
  state_dict = {}
  for path, leaf in traverse_util.flatten_dict(variables).items():
    leaf = np.asarray(leaf)
    name, layout = namer(path, leaf.ndim)
    state_dict[name] = np.array(_to_torch(leaf, layout), order="C")
    if path[0] == "batch_stats" and path[-1] == "mean":
      state_dict[name.rsplit(".", 1)[0] + "." + _NUM_BATCHES_TRACKED] = np.array(0, np.int64)
  return state_dict


STATE_DICT_SUFFIXES = (".safetensors", ".npz")


def read_state_dict_file(path: str) -> dict[str, np.ndarray]:
  """A torch-layout state dict (name -> NumPy array) from a `.safetensors` or `.npz` file.

  Raises FileNotFoundError or ValueError with a one-line message for a missing, unsupported or
  damaged file.
  """
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist; give a .safetensors or .npz state dict file "
                            f"or an export directory.")
  suffix = os.path.splitext(path)[1]
  try:
    if suffix == ".safetensors":
      return safetensors.numpy.load_file(path)
    if suffix == ".npz":
      with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
  except Exception as error:  # pylint: disable=broad-except  # each reader fails in its own way
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    raise ValueError(f"cannot read the state dict {path} (damaged or not a {suffix} file: "
                     f"{reason}); download or write it again.") from None
  raise ValueError(f"{path}: unknown state dict format {suffix!r}; use one of "
                   f"{list(STATE_DICT_SUFFIXES)} (or an export directory).")


def write_state_dict_file(path: str, state_dict: Mapping[str, Any]) -> None:
  """Writes `state_dict` (name -> array) atomically, as `.safetensors` or `.npz` by `path`'s
  suffix."""
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  arrays = {name: np.array(as_numpy(value), order="C") for name, value in state_dict.items()}
  suffix = os.path.splitext(path)[1]
  if suffix == ".safetensors":
    data = safetensors.numpy.save(arrays)
    fileio.atomic_write(path, lambda f: f.write(data))
  elif suffix == ".npz":
    fileio.atomic_write(path, lambda f: np.savez(f, **arrays))
  else:
    raise ValueError(f"{path}: unknown state dict format {suffix!r}; use one of "
                     f"{list(STATE_DICT_SUFFIXES)}.")
