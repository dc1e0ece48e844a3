"""A run's first state from pretrained weights (`config.init_from`), as the tasks supply it to the
loop (`Training.initialize`).

`config.init_from` (an export, or a torchvision/timm-layout `.safetensors` / `.npz` state dict:
`lct_flax.pretrained`) is applied only to a workdir without checkpoints; what it loaded is
recorded in config.json under INIT_RECORD_KEY and kept there when the run resumes. A task names
where its ResNet sits in the state: () for a classifier, ("backbone",) for a detector.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

import jax
from absl import logging
from flax import traverse_util

from lct_flax import checkpointing
from lct_flax import pretrained
from lct_flax.train_state import TrainState

INIT_RECORD_KEY = "init_from_source"

Initialize = Callable[[TrainState], tuple[TrainState, dict]]


def start(config: Any, workdir: str, abstract_state: Callable[[], TrainState], path: tuple,
          sharding: Any) -> tuple[Optional[Initialize], dict]:
  """(how the fresh state becomes the first one, or None; the init record of the run already in
  `workdir`). Reading and checking the source happens here, so its refusals come before the
  run writes anything. Without init_from the checkpoints are not looked at (in a multi-process
  run, process 0 may be creating their directory meanwhile)."""
  record = _previous_record(workdir)
  if not config.get("init_from") or _has_checkpoint(workdir):
    return None, record
  source = pretrained.read_source(config.init_from)
  target = traverse_util.flatten_dict(_variables_at(abstract_state(), path))
  plan = pretrained.plan_load(target, source.state_dict, tuple(config.get("init_skip", ())))
  return (lambda state: initialize_from(state, source, plan, path, sharding)), {}


def initialize_from(state: TrainState, source: pretrained.Source, plan: pretrained.LoadPlan,
                    path: tuple, sharding: Any) -> tuple[TrainState, dict]:
  """`state` with the planned variables loaded at `path`, and the record config.json keeps of
  the source. Logs the table of what was loaded."""
  logging.info("%s", pretrained.describe(source, plan))
  host = jax.device_get(_variables_at(state, path))
  loaded = jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]),
      pretrained.apply_plan(host, plan))
  record = {INIT_RECORD_KEY: {"path": source.path, "kind": source.kind, "sha256": source.sha256,
                              "loaded": len(plan.arrays), "initialised_fresh": plan.fresh,
                              "skipped": plan.skipped}}
  return state.replace(
      params=_with_subtree(state.params, path, loaded["params"]),
      batch_stats=_with_subtree(state.batch_stats, path, loaded["batch_stats"])), record


def _subtree(tree: Any, path: tuple) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _with_subtree(tree: dict, path: tuple, value: Any) -> dict:
  if not path:
    return value
  return {**tree, path[0]: _with_subtree(tree[path[0]], path[1:], value)}


def _variables_at(state: TrainState, path: tuple) -> dict:
  return {"params": _subtree(state.params, path),
          "batch_stats": _subtree(state.batch_stats, path)}


def _has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a checkpoint (looked up without creating anything)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return False
  checkpointer = checkpointing.Checkpointer(directory, create=False)
  try:
    return checkpointer.latest_step() is not None
  finally:
    checkpointer.close()


def _previous_record(workdir: str) -> dict:
  """The init_from record of the run already in `workdir` (kept when it resumes)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    saved = json.load(f)
  return {INIT_RECORD_KEY: saved[INIT_RECORD_KEY]} if INIT_RECORD_KEY in saved else {}
