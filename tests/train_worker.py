"""Runs one training process for the multi-device / multi-process tests (not a test module).

  python tests/train_worker.py --devices=N --workdir=W --config_json='{"key": value, ...}'
      [--emulate_processes=P] [--coordinator_address=A --num_processes=P --process_id=I]

The config is configs/demo.py with the dotted keys of --config_json set. XLA_FLAGS are the suite's
with N host devices (`child_env`) before JAX starts. With --emulate_processes=P one process
consumes the global batches that P processes would feed (their host-local shares concatenated),
for comparison with a real P-process run. Process 0 writes the final variables to
W/final_variables.npz.
"""

import argparse
import json
import os
import sys

import child_env


def parse_args():
  parser = argparse.ArgumentParser()
  parser.add_argument("--devices", type=int, required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--config_json", default="{}")
  parser.add_argument("--emulate_processes", type=int, default=0)
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  return parser.parse_args()


def main():
  args = parse_args()
  os.environ["XLA_FLAGS"] = child_env.xla_flags(args.devices)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from absl import logging
  logging.set_verbosity(logging.INFO)  # the tests read the progress lines
  import jax
  import numpy as np
  from flax import traverse_util

  from configs import demo
  from lct_flax import input_pipeline, parallel
  from lct_flax.tasks.classification import TASK as CLASSIFICATION
  import tiny

  if args.coordinator_address:
    parallel.initialize_distributed(parallel.DistributedSettings(
        mode="explicit", coordinator_address=args.coordinator_address,
        num_processes=args.num_processes, process_id=args.process_id,
        initialization_timeout=60))
  config = demo.get_config()
  for key, value in json.loads(args.config_json).items():
    tiny.set_key(config, key, value)

  def emulated_batches(start_step):
    shares = [input_pipeline.create_train_iterator(
        config.dataset, global_batch_size=config.batch_size, seed=config.seed,
        start_step=start_step, process_index=i, process_count=args.emulate_processes)
              for i in range(args.emulate_processes)]
    for parts in zip(*shares):
      yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  result = CLASSIFICATION.train_and_evaluate(
      config, args.workdir, train_batches=emulated_batches if args.emulate_processes else None)
  state = CLASSIFICATION.restore_state(config, args.workdir)
  variables = jax.tree.map(np.asarray, jax.device_get(
      {"params": state.params, "batch_stats": state.batch_stats}))
  if jax.process_index() == 0:
    flat = traverse_util.flatten_dict(variables, sep="/")
    np.savez(os.path.join(args.workdir, "final_variables.npz"), **flat)
    with open(os.path.join(args.workdir, "result.json"), "w") as f:
      json.dump(result, f)


if __name__ == "__main__":
  main()
