"""The type and allowed range of every training config key, checked in one place.

`validate(config)` runs before anything heavy (no JAX, TensorFlow or dataset is touched) and
refuses a config with one line that names the key, the value and what is allowed:

    config.batch_size=0 is not allowed: it must be an integer >= 1.

The rules are data: each dotted key has a rule (`Integer`, `Real`, `Flag`, `Name`, `OneOf`,
`Numbers`, `Names`, `Text`, `Record`: `lct_flax.schema_rules`). `COMMON_RULES` are every task's
keys; each task adds its own from a plain-Python module named in `TASK_RULES`
(`lct_flax.classifier_rules`, `lct_flax.detection.config_rules`: its `RULES` and its
`CROSS_CHECKS`); the attention blocks' registrations (`lct_flax.blocks`) give their options
(`model.attention_kwargs`); `CROSS_CHECKS` relate keys to each other (decay epochs inside the
run, ...). A new config key needs a rule: a key without one is refused as unknown, with the
nearest known key suggested, so typos in config files are caught too.
Keys marked `required=False` may be absent (the code has a default, or the key is newer than some
workdirs' config.json).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Iterator, Mapping, Optional

from lct_flax import blocks
from lct_flax import model_specs
from lct_flax.schema_rules import (Flag, Integer, Name, Names, Numbers, OneOf, Problem, Real,
                                   Record, Text, problem)

ATTENTION_KWARGS = "model.attention_kwargs"


class ConfigError(ValueError):
  """A config key is missing, unknown, of the wrong type or out of range."""


# Each task's own rules: task name -> the plain-Python module of its `RULES` and `CROSS_CHECKS`
# (`lct_flax.tasks.register` adds a task's). A config (or an export) without `task` is a
# classification one.
TASK_RULES = {"classification": "lct_flax.classifier_rules",
              "detection": "lct_flax.detection.config_rules"}
DEFAULT_TASK = "classification"

# Keys of every task ("task" itself: one of TASK_RULES).
COMMON_RULES: dict[str, Any] = {
    "dataset.name": Name(),
    "dataset.data_dir": Name(optional=True, noun="path", required=False),
    "dataset.manual_dir": Name(optional=True, noun="path", required=False),
    "dataset.train_split": Name(required=False),
    "dataset.eval_split": Name(required=False),
    "dataset.mean": Numbers(Real(), length=3, required=False),
    "dataset.std": Numbers(Real(0, open_low=True), length=3, required=False),
    "batch_size": Integer(minimum=1),
    "num_epochs": Integer(minimum=0),  # >= 1 unless num_train_steps > 0 (CROSS_CHECKS)
    "num_train_steps": Integer(minimum=1, also=(-1,)),
    "seed": Integer(minimum=0, maximum=2**31 - 1),
    "learning_rate": Real(minimum=0),
    "momentum": Real(0, 1, open_high=True),
    "nesterov": Flag(),
    "weight_decay": Real(minimum=0),
    "schedule": OneOf(("step", "cosine")),
    "lr_decay_epochs": Numbers(Real(0, open_low=True), ascending=True),
    # The same decays as fractions of the run, which shorten with it (instead of lr_decay_epochs).
    "lr_decay_fractions": Numbers(Real(0, 1, open_low=True, open_high=True), ascending=True,
                                  required=False),
    "lr_decay_factor": Real(0, 1, open_low=True),
    "warmup_epochs": Real(minimum=0),
    "warmup_steps": Integer(minimum=0, required=False),  # > 0: instead of warmup_epochs
    "warmup_ratio": Real(0, 1, required=False),  # the warm-up's first lr, as a fraction
    "grad_clip_norm": Real(minimum=0, required=False),  # 0: no clipping
    "half_precision": Flag(),
    "checkpoint_every_steps": Integer(minimum=1),
    "keep_checkpoints": Integer(minimum=1, required=False),
    "log_every_steps": Integer(minimum=1),
    "eval_every_epochs": Integer(minimum=0),  # 0: only at the end
    "profile_start_step": Integer(minimum=-1),  # -1: no trace
    "profile_num_steps": Integer(minimum=1),
    # Fine-tuning (issue 12).
    "init_from": Text(required=False),
    "init_skip": Names(required=False),
    "frozen_stages": Integer(minimum=-1, maximum=4, required=False),
    "norm_eval": Flag(required=False),
    "frozen_bn": Flag(required=False),
    "init_from_source": Record(),  # config.json's record of the init_from source and its sha256
}


def _epochs_or_steps(c: Mapping[str, Any]) -> Optional[Problem]:
  if c.get("num_train_steps") == -1 and c.get("num_epochs") == 0:
    return problem("num_epochs", 0, "an integer >= 1 (or set num_train_steps > 0)")
  return None


def _run_epochs(c: Mapping[str, Any]) -> Optional[int]:
  """The run's length in epochs when the config gives it (not when it counts steps)."""
  return c.get("num_epochs") if c.get("num_train_steps") == -1 else None


def _decay_inside_run(c: Mapping[str, Any]) -> Optional[Problem]:
  epochs, decays = _run_epochs(c), c.get("lr_decay_epochs")
  if decays and c.get("lr_decay_fractions"):
    return problem("lr_decay_epochs", decays,
                   "() when lr_decay_fractions gives the decays (one or the other)")
  if c.get("schedule") == "step" and epochs and decays and decays[-1] >= epochs:
    return problem("lr_decay_epochs", decays,
                   f"ascending epochs inside the run, each < num_epochs={epochs} (or give the "
                   f"decays as lr_decay_fractions of the run, which shorten with it)")
  return None


def _warmup_inside_run(c: Mapping[str, Any]) -> Optional[Problem]:
  warmup, epochs, decays = c.get("warmup_epochs"), _run_epochs(c), c.get("lr_decay_epochs")
  if epochs and c.get("lr_decay_fractions"):
    decays = [fraction * epochs for fraction in c["lr_decay_fractions"]]
  if not warmup:
    return None
  if epochs and warmup >= epochs:
    return problem("warmup_epochs", warmup, f"a number in [0, num_epochs={epochs})")
  if c.get("schedule") == "step" and decays and warmup > decays[0]:
    return problem("warmup_epochs", warmup,
                   f"a number in [0, {decays[0]:g}] (the first learning-rate decay)")
  return None


CROSS_CHECKS: tuple[Callable[[Mapping[str, Any]], Optional[Problem]], ...] = (
    _epochs_or_steps, _decay_inside_run, _warmup_inside_run)


def task_rules(task: str) -> dict[str, Any]:
  """Every key's rule in a config of `task` (one of TASK_RULES)."""
  own = importlib.import_module(TASK_RULES[task]).RULES
  return {"task": OneOf(tuple(TASK_RULES), required=False), **COMMON_RULES, **own}


def task_cross_checks(task: str) -> tuple[Callable[[Mapping[str, Any]], Optional[Problem]], ...]:
  return CROSS_CHECKS + importlib.import_module(TASK_RULES[task]).CROSS_CHECKS


def _sections(rules: Mapping[str, Any]) -> set[str]:
  """Every dotted prefix of a key in `rules` ("model", "dataset", "a" and "a.b" of "a.b.c")."""
  return {key.rsplit(".", depth)[0] for key in rules for depth in range(1, key.count(".") + 1)}


def _leaves(node: Mapping[str, Any], sections: set[str],
            prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted key, value), descending into the known sections only."""
  for key, value in node.items():
    path = f"{prefix}{key}"
    if path in sections and isinstance(value, Mapping):
      yield from _leaves(value, sections, f"{path}.")
    else:
      yield path, value


def _attention_option_problems(attention: str, options: Any) -> Iterator[Problem]:
  if not isinstance(options, Mapping):
    yield problem(ATTENTION_KWARGS, options,
                  model_specs.ClassifierSpec.config_rules()[ATTENTION_KWARGS].describe())
    return
  rules = blocks.get(attention).options if attention != blocks.NONE else {}
  for name, value in options.items():
    key = f"{ATTENTION_KWARGS}.{name}"
    if name not in rules:
      known = ", ".join(sorted(rules)) or "none"
      yield key, (f"config.{key}: attention {attention!r} has no option {name!r} ({known}); "
                  f"to switch blocks, name the block in the config argument, which brings its "
                  f"own options (--config=configs/demo.py:{attention}).")
    elif not rules[name].allows(value):
      yield problem(key, value, rules[name].describe())


def _unknown_key(key: str, rules: Mapping[str, Any]) -> Problem:
  close = difflib.get_close_matches(key, list(rules), n=1)
  hint = f"; did you mean {close[0]}?" if close else " (see lct_flax/config_schema.py)."
  return key, f"config.{key} is not a config key{hint}"


def problems(config: Any) -> list[Problem]:
  """Every problem of `config` (a ConfigDict or its JSON dict), as (key, one-line message).
  The rules are those of the config's `task` (`task_rules`; classification when absent)."""
  config = model_specs.plain(config)
  task = config.get("task", DEFAULT_TASK)
  if task not in TASK_RULES:  # the other keys' rules depend on it
    return [problem("task", task, OneOf(tuple(TASK_RULES)).describe())]
  rules = task_rules(task)
  sections = _sections(rules)
  flat = dict(_leaves(config, sections))
  found = [(key, f"config has no {key!r}; every {task} config needs it (see configs/).")
           for key, rule in rules.items() if rule.required and key not in flat]
  valid = {}
  for key, value in flat.items():
    if key in sections:
      found.append(problem(key, value, "a section (a ConfigDict)"))
    elif key not in rules:
      found.append(_unknown_key(key, rules))
    elif key == ATTENTION_KWARGS:
      attention = flat.get("model.attention")
      if attention in blocks.names():
        found.extend(_attention_option_problems(attention, value))
    elif rules[key].allows(value):
      valid[key] = value
    else:
      found.append(problem(key, value, rules[key].describe()))
  found.extend(p for check in task_cross_checks(task) if (p := check(valid)) is not None)
  return found


def validate(config: Any) -> None:
  """Raises ConfigError naming the first problem (and how many more there are)."""
  found = problems(config)
  if len(found) == 1:
    raise ConfigError(found[0][1])
  if found:
    others = ", ".join(key for key, _ in found[1:])
    raise ConfigError(f"{found[0][1].rstrip('.')} (and {len(found) - 1} more: {others}).")


def describe(key: str) -> Optional[str]:
  """What `key` allows (for messages about values that could not even be parsed)."""
  for task in TASK_RULES:
    rules = task_rules(task)
    if key in rules:
      return rules[key].describe()
  prefix, _, option = key.rpartition(".")
  for block in blocks.BLOCKS.values():
    if prefix == ATTENTION_KWARGS and option in block.options:
      return block.options[option].describe()
  return None
