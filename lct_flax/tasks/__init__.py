"""The task registry: every kind of training by name, each one module holding a `Task`
(`tasks.base`): `classification` (Tables 1-5) and `detection` (Tables 6-7).

A config names its task in `config.task` (absent: classification), an export in `model.task`
(absent: classification). Modules are imported when first asked for, so that naming a task loads
neither JAX nor TensorFlow. A new task is one module with `TASK = MyTask()` and one `register`
call, which also names the plain-Python module of its config keys' rules (`config_schema`);
nothing else in the package branches on the task.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from lct_flax import config_schema

MODULES = {"classification": "lct_flax.tasks.classification",
           "detection": "lct_flax.tasks.detection"}


def register(name: str, module: str, rules: str) -> None:
  """Adds (or replaces) the task `name`, implemented by `module`'s `TASK`; `rules` is the module
  of its config keys' `RULES` and `CROSS_CHECKS`, read before JAX loads (`module` itself when it
  imports no JAX at load)."""
  MODULES[name] = module
  config_schema.TASK_RULES[name] = rules


def get(name: str) -> Any:
  """The `Task` registered as `name` (ValueError naming the registered ones otherwise)."""
  if name not in MODULES:
    raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(MODULES)}.")
  return importlib.import_module(MODULES[name]).TASK


def of_config(config: Mapping[str, Any]) -> Any:
  """The task of a training config (a ConfigDict or its JSON)."""
  return get(config.get("task") or config_schema.DEFAULT_TASK)


def of_model_section(section: Mapping[str, Any]) -> Any:
  """The task of an export's `model` section."""
  return get(section.get("task") or config_schema.DEFAULT_TASK)
