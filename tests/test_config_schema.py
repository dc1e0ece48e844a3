"""Config validation: every key of every config in configs/ gets bad values (0, -1, NaN, the wrong
type, an empty name) through train.py's own parsing path, and each is refused with one line
naming the key, before JAX or TensorFlow are imported."""

import dataclasses
import glob
import importlib
import os
import subprocess
import sys

import pytest
from absl import flags

import train
from lct_flax import cli
from lct_flax import config_schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, REPO)
                 for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
                 if not p.endswith("__init__.py"))


def load_config(config_file):
  return importlib.import_module(config_file[:-3].replace(os.sep, ".")).get_config()

# Values of the bad-value sweep that a key legitimately takes (its documented special values, or
# any name where a free-form name is expected): these must be accepted, all others refused.
ALLOWED = {
    "num_train_steps": {"-1"}, "seed": {"0"}, "learning_rate": {"0"}, "momentum": {"0"},
    "weight_decay": {"0"}, "warmup_epochs": {"0"}, "label_smoothing": {"0"},
    "bn_group_size": {"0"}, "eval_every_epochs": {"0"}, "profile_start_step": {"0", "-1"},
    "lr_decay_epochs": {"()"}, "lr_decay_fractions": {"()"}, "frozen_stages": {"0", "-1"}, "init_skip": {"()", "nan", "abc"},
    "init_from": {"", "0", "-1", "nan"}, "warmup_steps": {"0"}, "warmup_ratio": {"0"},
    "grad_clip_norm": {"0"}, "dataset.flip_ratio": {"0"}, "dataset.min_image_size": {"0"},
    "model.attention_kwargs.w_init": {"0", "-1"}, "model.attention_kwargs.b_init": {"0", "-1"},
    **{f"dataset.{key}": {"0", "-1", "nan"}
       for key in ("name", "train_split", "eval_split", "data_dir", "manual_dir")},
}


def leaves(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items") and f"{prefix}{key}" != "model.attention_kwargs":
      yield from leaves(value, f"{prefix}{key}.")
    elif hasattr(value, "items"):
      yield from ((f"{prefix}{key}.{k}", v) for k, v in value.items())
    else:
      yield f"{prefix}{key}", value


def bad_values(value, key):
  """The sweep for a key, by the type of its value in the config file."""
  if isinstance(value, bool):
    return ["abc", "nan", "-1"]
  if isinstance(value, int) or key == "dataset.resize_size":
    return ["0", "-1", "nan", "abc", "1.5"]
  if isinstance(value, float):
    return ["0", "-1", "nan", "inf", "abc"]
  if isinstance(value, tuple):
    return ["0", "-1", "nan", "abc", "()"]
  return ["", "0", "-1", "nan"]  # names; None placeholders of names (data_dir, manual_dir)


def refusal(argv):
  """train.py's checks before any heavy import: the flags as train.py defines and parses them,
  then the config schema. The one-line message, or None if the command line is accepted."""
  flag_values = flags.FlagValues()
  train.define_flags(flag_values, sys_argv=argv)
  try:
    cli.parse_flags(argv, flag_values)
    config_schema.validate(flag_values.config)
  except (cli.FlagError, config_schema.ConfigError) as error:
    return str(error)
  return None


@pytest.mark.parametrize("config_file", CONFIGS)
def test_every_key_refuses_bad_values_with_one_line_naming_it(config_file):
  assert refusal(["train.py", f"--config={config_file}", "--workdir=w"]) is None
  config = load_config(config_file)
  checked = 0
  for key, value in leaves(config):
    for bad in bad_values(value, key):
      message = refusal(["train.py", f"--config={config_file}", "--workdir=w",
                         f"--config.{key}={bad}"])
      if bad in ALLOWED.get(key, ()):
        assert message is None, (key, bad, message)
        continue
      assert message is not None, f"--config.{key}={bad!r} was accepted"
      assert f"config.{key}" in message and "\n" not in message, (key, bad, message)
      checked += 1
  assert checked > 100


def test_schema_covers_every_key_and_matches_the_code():
  from lct_flax import blocks, models
  from lct_flax.tasks.classification import TASK as CLASSIFICATION
  classification_rules = config_schema.task_rules("classification")
  for config_file in CONFIGS:
    config = load_config(config_file)
    keys = {key for key, _ in leaves(config)}
    options = {key for key in keys if key.startswith("model.attention_kwargs.")}
    rules = config_schema.task_rules(config.get("task", "classification"))
    assert keys - options <= set(rules), (config_file, keys - options - set(rules))
  assert set(classification_rules["model.name"].choices) == set(models.STAGE_SIZES)
  assert set(blocks.names()) == {"none", "se", "se_norm", "lct"}
  assert classification_rules["model.attention"].allows("se_norm")
  for name, block in blocks.BLOCKS.items():
    fields = {f.name for f in dataclasses.fields(block.module_class())} - {"parent", "name"}
    assert set(block.options) == fields, name
  # The keys DESIGN.md says every training config has are required; the classification task's
  # check_config uses it.
  for key in ("batch_size", "num_epochs", "num_train_steps", "seed", "checkpoint_every_steps",
              "model.name", "model.attention", "dataset.name"):
    assert classification_rules[key].required
  config = importlib.import_module("configs.demo").get_config()
  config.batch_size = -4
  with pytest.raises(ValueError, match=r"config.batch_size=-4 is not allowed"):
    CLASSIFICATION.check_config(config)


@pytest.mark.parametrize("change,expected", [
    ({"num_epochs": 0}, "config.num_epochs=0 is not allowed: it must be an integer >= 1 (or set "
                        "num_train_steps > 0)"),
    ({"lr_decay_fractions": (), "lr_decay_epochs": (20, 40)}, "each < num_epochs=30 (or give "
                                                              "the decays as lr_decay_fractions"),
    ({"lr_decay_fractions": (), "lr_decay_epochs": (27, 20)}, "strictly ascending"),
    ({"lr_decay_epochs": (20, 27)}, "config.lr_decay_epochs=(20, 27) is not allowed: it must be () "
                                    "when lr_decay_fractions gives the decays"),
    ({"lr_decay_fractions": (0.5, 1.0)}, "each in (0, 1), strictly ascending"),
    ({"warmup_epochs": 25.0}, "config.warmup_epochs=25.0 is not allowed: it must be a number in "
                              "[0, 20] (the first learning-rate decay)"),
    ({"dataset.resize_size": 8}, "None or an integer >= dataset.image_size=16"),
    ({"bn_group_size": 5}, "0 or a divisor of batch_size=64"),
    ({"learning_rat": 0.1}, "config.learning_rat is not a config key; did you mean learning_rate?"),
    ({"model.attention_kwargs.reduction": 4}, "attention 'lct' has no option 'reduction'"),
])
def test_cross_checks_and_unknown_keys(change, expected):
  config = importlib.import_module("configs.demo").get_config().to_dict()
  for key, value in change.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  with pytest.raises(config_schema.ConfigError) as error:
    config_schema.validate(config)
  assert expected in str(error.value)


def test_a_config_read_back_from_json_passes_and_steps_lift_the_epoch_checks():
  import json
  config = json.loads(importlib.import_module("configs.demo").get_config().to_json())
  config_schema.validate(config)  # tuples are lists in config.json
  config.update(num_epochs=0, num_train_steps=40, lr_decay_epochs=[50, 60],
                lr_decay_fractions=[])
  config_schema.validate(config)
  config["batch_size"] = 1.0
  assert "an integer >= 1" in config_schema.problems(config)[0][1]


# ---------------------------------------------------------------------------------------------
# A sample through the real command line: one line, no traceback, and nothing heavy imported.

COMMAND_LINE_SAMPLE = {
    "batch_size=0": "config.batch_size=0",
    "learning_rate=nan": "config.learning_rate=nan",
    "model.width=0": "config.model.width=0.0",
    "dataset.image_size=0": "config.dataset.image_size=0",
    "num_epochs=0": "config.num_epochs=0",
    "model.name=": "config.model.name=''",
    "batch_size=abc": "config.batch_size='abc'",
    "model.attention_kwargs.groups=-1": "config.model.attention_kwargs.groups=-1",
    "lr_decay_epochs=(40,20)": "config.lr_decay_epochs=(40, 20)",
}


def test_command_line_refusals_import_neither_jax_nor_tensorflow():
  procs = {case: subprocess.Popen(
      [sys.executable, "-X", "importtime", "train.py", "--config=configs/demo.py",
       "--workdir=unused", f"--config.{case}"], cwd=REPO, text=True, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE) for case in COMMAND_LINE_SAMPLE}
  for case, proc in procs.items():
    out, err = proc.communicate(timeout=120)
    imported = {line.split("|")[-1].strip() for line in err.splitlines()
                if line.startswith("import time:")}
    lines = [line for line in (out + err).splitlines()
             if line.strip() and not line.startswith("import time:")]
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert COMMAND_LINE_SAMPLE[case] in lines[0]
    assert not {m for m in imported if m.split(".")[0] in ("jax", "tensorflow", "flax")}, case


def test_new_keys_and_nested_sections_are_one_rule_each(monkeypatch):
  """How the detection settings will be added: a rule per dotted key, sections follow."""
  from lct_flax import classifier_rules
  monkeypatch.setitem(classifier_rules.RULES, "detection.rpn.nms_threshold",
                      config_schema.Real(0, 1, open_low=True, required=False))
  config = importlib.import_module("configs.demo").get_config().to_dict()
  config["detection"] = {"rpn": {"nms_threshold": 0.7}}
  config_schema.validate(config)
  config["detection"]["rpn"]["nms_threshold"] = 0.0
  with pytest.raises(config_schema.ConfigError,
                     match=r"config.detection.rpn.nms_threshold=0.0 is not allowed: it must be a "
                           r"finite number in \(0, 1\]"):
    config_schema.validate(config)
  config["detection"] = 3
  with pytest.raises(config_schema.ConfigError, match=r"config.detection=3 is not allowed"):
    config_schema.validate(config)


# A test-only task's config rules (this module is its rules module).
RULES = {"model.depth": config_schema.Integer(minimum=1)}
CROSS_CHECKS = (lambda c: ("model.depth", "config.model.depth: odd depths only.")
                if c.get("model.depth", 1) % 2 == 0 else None,)


def test_a_registered_task_brings_its_own_config_rules(monkeypatch):
  """`tasks.register` names the task's rules module; the schema reads it (and the other tasks'
  keys stay unknown to it) without importing the task's module."""
  from lct_flax import tasks
  monkeypatch.setattr(tasks, "MODULES", dict(tasks.MODULES))
  monkeypatch.setattr(config_schema, "TASK_RULES", dict(config_schema.TASK_RULES))
  tasks.register("toy", "a_module_never_imported", rules=__name__)
  config = importlib.import_module("configs.demo").get_config().to_dict()
  config["task"] = "toy"
  config["model"] = {"depth": 3}
  found = dict(config_schema.problems(config))
  assert "model.depth" not in found and "model.name" not in found
  assert found["dataset.image_size"].startswith("config.dataset.image_size is not a config key")
  config["model"]["depth"] = 4
  assert dict(config_schema.problems(config))["model.depth"] == (
      "config.model.depth: odd depths only.")
  config["model"]["depth"] = 0
  assert "an integer >= 1" in dict(config_schema.problems(config))["model.depth"]
  config["task"] = "toys"
  assert config_schema.problems(config) == [
      ("task", "config.task='toys' is not allowed: it must be one of 'classification', "
               "'detection', 'toy'.")]


@pytest.mark.parametrize("block,options", [
    ("se", {"reduction": 4}), ("none", {}), ("se_norm", {"reduction": 4, "groups": 4}),
    ("lct", {"groups": 4, "w_init": 0.0, "b_init": 1.0, "use_norm": True, "use_transform": True})])
def test_the_config_argument_switches_the_block_with_its_own_options(block, options):
  argv = ["train.py", f"--config=configs/demo.py:{block}", "--workdir=unused"]
  assert refusal(argv) is None
  flag_values = flags.FlagValues()
  train.define_flags(flag_values, sys_argv=argv)
  cli.parse_flags(argv, flag_values)
  assert flag_values.config.model.attention == block
  assert flag_values.config.model.attention_kwargs.to_dict() == options
  switched = flag_values.config.to_dict()
  default = importlib.import_module("configs.demo").get_config().to_dict()
  assert {k: v for k, v in switched.items() if k != "model"} == {
      k: v for k, v in default.items() if k != "model"}


def test_each_table_1_config_is_its_plain_config_with_the_block_named():
  for model in ("resnet50", "resnet101"):
    plain = importlib.import_module(f"configs.{model}")
    for block in ("se", "lct"):
      row = importlib.import_module(f"configs.{block}_{model}").get_config()
      assert plain.get_config(block).to_dict() == row.to_dict()
  lct = importlib.import_module("configs.lct_resnet50")
  assert lct.get_config("groups=32").model.attention_kwargs.to_dict() == {
      "groups": 32, "w_init": 0.0, "b_init": 1.0, "use_norm": True, "use_transform": True}
  assert lct.get_config("se,reduction=8").model.attention_kwargs.to_dict() == {"reduction": 8}


@pytest.mark.parametrize("override,message", [
    ("--config.model.atention=se",
     "the config has no key 'model.atention' (did you mean 'model.attention'?);"),
    ("--config.bach_size=3", "the config has no key 'bach_size' (did you mean 'batch_size'?);"),
    ("--config.model.attention=se",
     "attention 'se' has no option 'b_init' (epsilon, groups, reduction, use_norm); to switch "
     "blocks, name the block in the config argument, which brings its own options "
     "(--config=configs/demo.py:se)")])
def test_a_mistyped_key_or_a_block_switched_by_key_is_refused_saying_what_to_write(override,
                                                                                    message):
  refused = refusal(["train.py", "--config=configs/demo.py", "--workdir=unused", override])
  assert refused is not None and message in refused and "\\" not in refused
