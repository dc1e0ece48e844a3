"""step_memory: the compiled peak that train.py logs at the start of a run on a GPU or TPU comes
from the very executable the first step runs (no second compile), and the line says whether it
fits."""

import jax
import numpy as np

from lct_flax import step_memory
from lct_flax.tasks.classification import TASK as CLASSIFICATION
from tiny import tiny_demo_config

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def test_the_step_compiled_for_the_line_is_the_one_the_first_step_runs():
  config = tiny_demo_config(None, batch_size=4)
  experiment = CLASSIFICATION.build_experiment(config, num_classes=10, steps_per_epoch=1)
  state = experiment.init_state()
  abstract, _ = CLASSIFICATION.abstract_batches(config, config.batch_size)
  batch = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  train_step = CLASSIFICATION.compile_train_step(experiment)
  memory = train_step.lower(state, batch).compile().memory_analysis()
  state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  assert state_bytes <= memory.argument_size_in_bytes < step_memory.peak_bytes(memory)

  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **_: compiles.append(event) if event == BACKEND_COMPILE else None)
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  assert compiles == []
  half = jax.tree.map(lambda x: x[:2], batch)   # another shape: a compile the listener sees
  jax.block_until_ready(train_step(state, half))
  assert compiles == [BACKEND_COMPILE]


def test_the_line_says_whether_the_step_fits():
  assert step_memory.describe(3 * 2**30, 60 * 2**30) == (
      "the train step needs 3.00 GiB per device (compiled peak) of the 60.00 GiB the device "
      "offers (5%)")
  refused = step_memory.describe(90 * 2**30, 60 * 2**30)
  assert refused.startswith("the train step needs 90.00 GiB per device (compiled peak) of the "
                            "60.00 GiB the device offers (150%); it will not fit: lower "
                            "--config.batch_size")


def test_a_cpu_reports_no_device_memory_so_nothing_is_compiled_for_the_line():
  assert step_memory.device_bytes(jax.devices("cpu")[0]) is None
