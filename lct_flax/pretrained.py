"""Starting a run from pretrained weights (`config.init_from`): exports and torch-layout files.

A source is an export directory (`lct_flax.export`), or a `.safetensors` / `.npz` file holding a
torchvision/timm-layout state dict (the names `lct_flax.interop` reads). Both are compared with
the model in torch names, and the load is partial only where it must be:

* a parameter of an attention block that the source lacks (LCT's `w`/`b`, SE's FC layers, when the
  source is a plain ResNet) keeps its fresh initialisation (LCT then starts at its Table 5
  initialisation, w=0, b=1);
* the classifier (`fc.*`) keeps its fresh initialisation when the source lacks it or has another
  number of classes;
* any other source tensor with no place in the model, any other shape that disagrees and any other
  variable the source lacks is refused by name, before any training, unless a pattern of
  `init_skip` (fnmatch globs on torch names, e.g. "fc.*") names it: named source tensors are not
  loaded, named model variables are initialised fresh.

BatchNorm running statistics come with the weights. `describe` gives the table the run logs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Sequence

import numpy as np
from flax import traverse_util

from lct_flax import blocks
from lct_flax import export_format
from lct_flax import interop

CLASSIFIER_PREFIX = "fc."


@dataclasses.dataclass(frozen=True)
class Source:
  """A torch-layout state dict read from `path`, with what identifies it."""
  path: str
  kind: str            # "export", "safetensors" or "npz"
  sha256: str          # of the export's variables file, or of the state dict file
  state_dict: dict


@dataclasses.dataclass(frozen=True)
class LoadPlan:
  """What `init_from` does to each variable: `arrays` (flat flax path -> array) are loaded;
  `fresh` (torch names) keep their initialisation; `skipped` (source names) are not loaded."""
  arrays: dict
  fresh: list
  skipped: list


def read_source(path: str) -> Source:
  """The state dict at `path` (export directory, .safetensors or .npz), in torch layout."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    metadata = export_format.read_metadata(path)
    model = metadata.get("model", {})
    if model.get("task") == "detection":
      raise ValueError(f"init_from: {path} is a detector export ({model.get('detector')} with a "
                       f"{model.get('name')} backbone); init_from takes a classifier: an export "
                       f"of a classification run, or a torchvision/timm-layout .safetensors / "
                       f".npz state dict.")
    flat = export_format.load_variables(path, metadata)
    state_dict = interop.to_torch_state_dict(export_format.unflatten_variables(flat))
    return Source(path, "export", metadata["sha256"], state_dict)
  state_dict = interop.read_state_dict_file(path)
  return Source(path, os.path.splitext(path)[1][1:], export_format.sha256(path), state_dict)


def _skipped(name: str, patterns: Sequence[str]) -> bool:
  return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _may_stay_fresh(name: str) -> bool:
  return name.startswith(CLASSIFIER_PREFIX) or any(f".{block.module_name}." in name
                                                     for block in blocks.BLOCKS.values())


def plan_load(target: dict, state_dict: dict, skip: Sequence[str] = ()) -> LoadPlan:
  """Decides, for flat flax variables `target` (path -> array or ShapeDtypeStruct), what the
  torch-layout `state_dict` provides. Raises ValueError naming every refused tensor."""
  match = interop.match_state_dict(target, state_dict)
  fresh, skipped, refused = [], [], []
  arrays = {}
  for path, name in match.names.items():
    if _skipped(name, skip):
      fresh.append(name)
      if name in state_dict:
        skipped.append(name)
    elif path in match.arrays:
      arrays[path] = match.arrays[path]
    elif name in match.mismatched and not name.startswith(CLASSIFIER_PREFIX):
      refused.append(interop.describe_mismatch(name, match.mismatched[name]))
    elif name in match.mismatched or _may_stay_fresh(name):
      fresh.append(name)
    else:
      refused.append(f"{name} is missing from the source")
  for name in match.unexpected:
    if _skipped(name, skip):
      skipped.append(name)
    else:
      refused.append(f"{name} has no place in the model")
  if refused:
    raise ValueError(f"init_from: {_few(refused, 3)}; name them in --config.init_skip (fnmatch "
                     f"patterns such as 'fc.*') to leave them out, or use a source that fits.")
  return LoadPlan(arrays, fresh, sorted(skipped))


def apply_plan(variables: dict, plan: LoadPlan) -> dict:
  """`variables` (nested, e.g. {"params", "batch_stats"}) with the plan's arrays put in."""
  flat = traverse_util.flatten_dict(variables)
  for path, array in plan.arrays.items():
    flat[path] = np.asarray(array, dtype=flat[path].dtype)
  return traverse_util.unflatten_dict(flat)


def _few(names: Sequence[str], shown: int = 6) -> str:
  more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
  return ", ".join(names[:shown]) + more


def describe(source: Source, plan: LoadPlan) -> str:
  """The table a run logs: loaded, initialised fresh, skipped (counts, and the names where few)."""
  rows = [("loaded", len(plan.arrays), ""),
          ("initialised fresh", len(plan.fresh), _few(plan.fresh)),
          ("skipped (init_skip)", len(plan.skipped), _few(plan.skipped))]
  lines = [f"init_from {source.path} ({source.kind}, sha256 {source.sha256[:12]}):",
           "| | tensors | names |", "|---|---:|---|"]
  lines += [f"| {what} | {count} | {names} |" for what, count, names in rows]
  return "\n".join(lines)
