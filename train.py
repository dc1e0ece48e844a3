"""Trains a model: `python train.py --config=configs/<experiment>.py --workdir=DIR`.

The config's task (`lct_flax.tasks`: classification for configs/*.py, detection for
configs/detection/*.py) builds the run; `lct_flax.loop` trains it.

Running the same command again resumes from the newest checkpoint in DIR. One run at a time holds
DIR (a lock file; `--force_unlock` takes over a lock left on another host by a run that is gone).
Multi-process runs: `--distributed=auto` on SLURM or TPU pods (jax.distributed finds its
settings), or `--distributed=explicit --coordinator_address=HOST:PORT --num_processes=N
--process_id=I`. The config is checked (lct_flax.config_schema) before JAX or TensorFlow load.
"""

from typing import Optional, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from lct_flax import cli
from lct_flax import config_schema
from lct_flax import tasks
from lct_flax import workdir_lock

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS,
                 sys_argv: Optional[Sequence[str]] = None) -> None:
  """train.py's flags on `flag_values`; `sys_argv` is the command line when it is not sys.argv
  (ml_collections reads the --config.KEY overrides from it)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True,
                                  flag_values=flag_values,
                                  sys_argv=None if sys_argv is None else list(sys_argv))
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and config.json.",
                      flag_values=flag_values)
  flags.DEFINE_bool("force_unlock", False,
                    "Take over the workdir's lock even when it was taken on another host (whose "
                    "run this host cannot check): only when that run is known to be gone.",
                    flag_values=flag_values)
  flags.DEFINE_enum("distributed", "off", ["off", "auto", "explicit"],
                    "Multi-process start-up of jax.distributed.", flag_values=flag_values)
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (explicit mode).",
                      flag_values=flag_values)
  flags.DEFINE_integer("num_processes", None, "Number of processes (explicit mode).",
                       flag_values=flag_values)
  flags.DEFINE_integer("process_id", None, "This process's index (explicit mode).",
                       flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config_schema.validate(FLAGS.config)
  workdir_lock.check_writable(FLAGS.workdir)
  from lct_flax import parallel  # JAX, and TensorFlow with the trainer: only for a sound command
  parallel.initialize_distributed(parallel.DistributedSettings(
      mode=FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id))
  tasks.of_config(FLAGS.config).train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                                   force_unlock=FLAGS.force_unlock)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
