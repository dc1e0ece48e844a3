"""The demo config shrunk for tests: 16 px digits, width 1/8, batch 32. One definition shared by
the in-process tests, the command-line tests (as --config.KEY=VALUE flags) and the worker script."""

from configs import demo

# The decays at fixed epochs, not fractions of the run: tests stop runs early by lowering
# num_train_steps and resume them with the full count, which must not move the schedule.
TINY_OVERRIDES = {"dataset.image_size": 16, "dataset.resize_size": 16, "model.width": 0.125,
                  "batch_size": 32, "eval_every_epochs": 0, "log_every_steps": 5,
                  "checkpoint_every_steps": 1000, "lr_decay_fractions": (),
                  "lr_decay_epochs": (20, 27)}


def set_key(config, key, value):
  """config[key] = value for a dotted key such as "model.width" (lists become tuples)."""
  *parents, leaf = key.split(".")
  for parent in parents:
    config = config[parent]
  config[leaf] = tuple(value) if isinstance(value, list) else value


def tiny_overrides(data_dir, **overrides):
  """Dotted keys -> values; keyword overrides use "__" for "." (model__width=0.25)."""
  return {"dataset.data_dir": data_dir, **TINY_OVERRIDES,
          **{k.replace("__", "."): v for k, v in overrides.items()}}


def tiny_demo_config(data_dir, **overrides):
  config = demo.get_config()
  for key, value in tiny_overrides(data_dir, **overrides).items():
    set_key(config, key, value)
  return config


def tiny_flags(data_dir, **overrides):
  """The same config as train.py flags, for configs/demo.py."""
  return [f"--config.{k}={v}" for k, v in tiny_overrides(data_dir, **overrides).items()]
