"""Trains a model: `python train.py --config=configs/<experiment>.py --workdir=DIR`.

Running the same command again resumes from the newest checkpoint in DIR. Multi-process runs:
`--distributed=auto` on SLURM or TPU pods (jax.distributed finds its settings), or
`--distributed=explicit --coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from lct_flax import cli
from lct_flax import parallel
from lct_flax import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and config.json.")
flags.DEFINE_enum("distributed", "off", ["off", "auto", "explicit"],
                  "Multi-process start-up of jax.distributed.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (explicit mode).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit mode).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit mode).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed(parallel.DistributedSettings(
      mode=FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id))
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
