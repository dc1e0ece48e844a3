"""The task interface: what a kind of training (classification, detection) supplies to the rest.

A task is one module holding one `Task` object, registered by name in `lct_flax.tasks`. From a
config it builds the model, its initial variables and its frozen-parameter labels (so that
`build_experiment` and `restore_state` below are one path for every task), the workdir identity,
and the loop's `Training` (compiled steps, batches, evaluation). For exports it writes the `model`
and `dataset` sections of export.json, rebuilds the model from them, and evaluates an export.
`train.py`, `lct_flax.export`, `lct_flax.evaluate` and the loop use only this interface.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from lct_flax import config_schema

if TYPE_CHECKING:  # JAX, flax and TensorFlow load where a task is used, not where it is named
  import flax.linen as nn
  import ml_collections
  from lct_flax import loop
  from lct_flax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What a config determines before any state exists: mesh, data sizes, model, schedule,
  optimizer (frozen parameters partitioned out: `param_labels`, else None) and the compiled
  function that creates the replicated initial state."""
  config: Any
  mesh: Any
  num_classes: int
  steps_per_epoch: int
  total_steps: int
  model: Any
  schedule: Any
  optimizer: Any
  param_labels: Any
  init_state: Callable[[], Any]

  def abstract_state(self) -> Any:
    """Shapes, dtypes and (replicated) shardings of the initial state, without creating it."""
    from lct_flax import train_state
    return train_state.abstract_state_of(self.init_state, self.mesh)


class Task(abc.ABC):
  """One kind of training. `name` is `config.task` and an export's `model.task`; `spec` the
  model family (`model_specs`); `pretrained_path` is where `init_from` loads a ResNet into the
  state's variables; `identity_defaults` are the values of identity keys that an older
  model.json lacks."""
  name: str
  spec: type
  pretrained_path: tuple = ()
  identity_defaults: Mapping[str, Any] = {}

  # -- the model of a training config ----------------------------------------------------------

  def check_config(self, config: ml_collections.ConfigDict) -> None:
    """Refuses, with one `ConfigError` line, a config this task cannot run: the schema's rules,
    the task's own keys and checks among them (`config_schema.TASK_RULES`)."""
    config_schema.validate(config)

  @abc.abstractmethod
  def create_model(self, config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The module `config.model` describes, as trained (frozen parts included)."""

  @abc.abstractmethod
  def init_variables(self, model: nn.Module, dataset: Mapping[str, Any], rng: Any) -> dict:
    """`model`'s freshly initialised variables, on an input of `dataset`'s shape (a training
    config's `dataset`, or an export's `dataset` section)."""

  @abc.abstractmethod
  def parameter_labels(self, params: Any, config: ml_collections.ConfigDict) -> Optional[Any]:
    """`freezing` labels of `params` when the config freezes something, else None."""

  def model_identity(self, config: ml_collections.ConfigDict, num_classes: int) -> dict:
    """The entries of model.json: what decides the saved state's shapes or its meaning (the
    spec's, and what training freezes)."""
    frozen_stages, frozen_bn = frozen(config)
    return {**self.spec.from_config(config, num_classes).identity(),
            "frozen_stages": frozen_stages, "frozen_bn": frozen_bn}

  # -- training ------------------------------------------------------------------------------

  @abc.abstractmethod
  def loss_fn(self, experiment: Experiment) -> Callable:
    """The experiment's loss as `train_state.train_step` takes it."""

  @abc.abstractmethod
  def compile_eval_step(self, experiment: Experiment) -> Callable:
    """The jitted eval step (variables, batch) over the experiment's mesh."""

  def compile_train_step(self, experiment: Experiment) -> Callable:
    """The jitted `train_state.train_step` of the task's loss over the experiment's mesh: the
    batch sharded, the state replicated and donated."""
    import functools
    import jax
    from lct_flax import parallel
    from lct_flax import train_state
    replicated = parallel.replicated_sharding(experiment.mesh)
    return jax.jit(
        functools.partial(train_state.train_step, loss_fn=self.loss_fn(experiment),
                          optimizer=experiment.optimizer, param_labels=experiment.param_labels),
        in_shardings=(replicated, parallel.batch_sharding(experiment.mesh)),
        out_shardings=(replicated, replicated), donate_argnums=(0,))

  @abc.abstractmethod
  def sizes(self, config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(number of classes, steps per epoch) of the config's dataset, prepared first if needed."""

  # -- what the accelerator plan compiles (`lct_flax.plan`), without any data -----------------

  planned_classes: Mapping[str, int] = {}   # dataset name -> its number of classes
  input_cpu_ms_per_image: Optional[float] = None   # the host's input pipeline, where measured

  @abc.abstractmethod
  def abstract_batches(self, config: ml_collections.ConfigDict,
                       global_batch: int) -> tuple[dict, dict]:
    """(train, eval) batches of `global_batch` examples as the device sees them: fields of
    `jax.ShapeDtypeStruct`s (the largest canvas where the data has several)."""

  @abc.abstractmethod
  def training(self, config: ml_collections.ConfigDict, workdir: str,
               **options: Any) -> loop.Training:
    """What the loop runs for `config` in `workdir`."""

  def assemble_training(self, experiment: Experiment, workdir: str,
                        **parts: Any) -> loop.Training:
    """The loop's `Training` of `experiment` in `workdir`: what every task's has (identity,
    sizes, schedule, the compiled init and train step, fine-tuning from `config.init_from`) and
    the task's own `parts` (batches, evaluation, description, log keys)."""
    from lct_flax import finetuning
    from lct_flax import loop
    from lct_flax import parallel
    config = experiment.config
    initialize, record = finetuning.start(config, workdir, experiment.abstract_state,
                                          self.pretrained_path,
                                          parallel.replicated_sharding(experiment.mesh))
    return loop.Training(
        config=config, mesh=experiment.mesh,
        identity=self.model_identity(config, experiment.num_classes),
        steps_per_epoch=experiment.steps_per_epoch, total_steps=experiment.total_steps,
        schedule=experiment.schedule, init_state=experiment.init_state,
        abstract_state=experiment.abstract_state, train_step=self.compile_train_step(experiment),
        identity_defaults=dict(self.identity_defaults), initialize=initialize, record=record,
        **parts)

  def train_and_evaluate(self, config: ml_collections.ConfigDict, workdir: str, *,
                         force_unlock: bool = False, **options: Any) -> dict:
    """Trains and evaluates as `config` says (`lct_flax.loop.run`): resumes from the newest
    checkpoint in `workdir`; returns the last eval metrics with "step" and "preempted"."""
    from lct_flax import loop
    self.check_config(config)
    return loop.run(lambda: self.training(config, workdir, **options), workdir,
                    force_unlock=force_unlock)

  # -- exports -------------------------------------------------------------------------------

  def model_section(self, config: Mapping[str, Any], num_classes: int) -> dict:
    """export.json's `model` of a training config (a ConfigDict or its JSON): its spec."""
    return self.spec.from_config(config, num_classes).to_section()

  @abc.abstractmethod
  def dataset_section(self, config: Mapping[str, Any]) -> dict:
    """export.json's `dataset`: the data and eval preprocessing of a training config."""

  def build_model(self, model_section: Mapping[str, Any]) -> nn.Module:
    """The inference module of a `model` section (ValueError naming a bad entry)."""
    return self.spec.from_section(model_section).module()

  def abstract_variables(self, model: nn.Module, dataset_section: Mapping[str, Any]) -> dict:
    """Shapes and dtypes of `model`'s variables (nothing is computed)."""
    import jax
    return jax.eval_shape(
        lambda: self.init_variables(model, dataset_section, jax.random.key(0)))

  @abc.abstractmethod
  def evaluate_export(self, export_dir: str, model: nn.Module, variables: dict,
                      config: ml_collections.ConfigDict, **options: Any) -> dict:
    """The result record `python -m lct_flax.evaluate` prints and writes."""

  @abc.abstractmethod
  def format_result(self, result: dict) -> str:
    """The line `python -m lct_flax.evaluate` prints."""

  # -- one path for every task ---------------------------------------------------------------

  def build_experiment(self, config: ml_collections.ConfigDict, *,
                       num_classes: Optional[int] = None,
                       steps_per_epoch: Optional[int] = None, mesh: Any = None) -> Experiment:
    """Checks `config` and builds what it determines; the dataset gives the number of classes
    and the steps per epoch unless they are passed in; `mesh` is every device's unless given
    (the plan's: an absent accelerator's)."""
    import functools
    import jax
    from lct_flax import freezing
    from lct_flax import optimization
    from lct_flax import parallel

    self.check_config(config)
    if num_classes is None or steps_per_epoch is None:
      num_classes, steps_per_epoch = self.sizes(config)
    mesh = parallel.create_mesh() if mesh is None else mesh
    schedule = optimization.create_learning_rate_schedule(config, steps_per_epoch)
    model = self.create_model(config, num_classes)
    optimizer = optimization.create_optimizer(config, schedule)
    init = functools.partial(_initial_state, self, model, config)
    param_labels = self.parameter_labels(
        jax.eval_shape(lambda: init(optimizer).params), config)
    if param_labels is not None:
      optimizer = freezing.partition_optimizer(optimizer, param_labels)
    return Experiment(
        config=config, mesh=mesh, num_classes=num_classes, steps_per_epoch=steps_per_epoch,
        total_steps=optimization.total_steps(config, steps_per_epoch), model=model,
        schedule=schedule, optimizer=optimizer, param_labels=param_labels,
        init_state=jax.jit(functools.partial(init, optimizer),
                           out_shardings=parallel.replicated_sharding(mesh)))

  def restore_state(self, config: ml_collections.ConfigDict, workdir: str,
                    step: Optional[int] = None) -> TrainState:
    """The state of checkpoint `step` (default: the newest) of the run in `workdir`; needs no
    dataset (the number of classes comes from model.json) and writes nothing."""
    from lct_flax import checkpointing
    from lct_flax import loop
    path = os.path.join(workdir, "model.json")
    if not os.path.exists(path):
      raise checkpointing.CheckpointError(f"{workdir} holds no training run (no model.json); "
                                          f"pass the --workdir that train.py wrote.")
    with open(path) as f:
      num_classes = json.load(f)["num_classes"]
    # The optimizer state's structure does not depend on the schedule: any steps_per_epoch fits.
    experiment = self.build_experiment(config, num_classes=num_classes, steps_per_epoch=1)
    checkpointer = loop.checkpointer_for(workdir, create=False)
    try:
      return checkpointer.restore(experiment.abstract_state(), step)
    finally:
      checkpointer.close()


def frozen(config: Mapping[str, Any]) -> tuple[int, bool]:
  """(frozen_stages, frozen_bn) of a config; absent: nothing frozen."""
  return int(config.get("frozen_stages", -1)), bool(config.get("frozen_bn", False))


def _initial_state(task: Task, model: Any, config: Any, optimizer: Any) -> TrainState:
  import jax
  from lct_flax.train_state import TrainState
  init_rng, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  return TrainState.create(task.init_variables(model, config.dataset, init_rng), optimizer,
                           rng)
