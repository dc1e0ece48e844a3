"""Deviceless (ahead-of-time) compiles of a run's real steps for an absent GPU or TPU, and what
the compiled programs say about memory, work and traffic per device.

`target_mesh` describes `devices` accelerators of a `accelerators.Target` with
`jax.experimental.topologies` (the compile-only packages of requirements-plan.txt supply the
GPU and TPU compilers; JAX itself runs on the CPU). `compile_steps` builds the task's experiment
on that mesh and compiles the same jitted train and eval steps, with the same shardings, that
`train.py` runs (`Task.compile_train_step`, `Task.compile_eval_step`): the global batch split
over the devices, the state replicated.

Per step: the compiled peak (`step_memory.peak_bytes`: what the runtime allocates), the FLOPs (TPU:
the compiled program's cost analysis; GPU, where XLA offers none for deviceless targets: XLA's HLO
cost analysis of the same step lowered for the CPU, divided over the devices), the FLOPs of the
unoptimised program (the count without rematerialisation), HBM bytes (TPU: cost analysis; GPU:
`hlo_stats`' kernel traffic), kernels and collectives (`hlo_stats`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Optional

import jax

from lct_flax import accelerators
from lct_flax import hlo_stats
from lct_flax import parallel
from lct_flax import step_memory


# The TPU compiler's refusal of a step that does not fit even rematerialised.
_HBM_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([GM])\) exceeds available HBM "
                      r"\(([\d.]+)([GM])\)")


class DoesNotFit(Exception):
  """The compiler refused the step: its temporaries need `required` bytes of `available`."""

  def __init__(self, required: float, available: float):
    super().__init__(f"{required} > {available}")
    self.required, self.available = required, available
    self.state_bytes = 0


@dataclasses.dataclass(frozen=True)
class StepReport:
  """One compiled step, per device."""
  argument_bytes: int
  peak_bytes: int              # step_memory.peak_bytes: what the runtime allocates
  flops: float                 # as compiled (GPU: the unoptimised count / devices)
  unoptimised_flops: float     # the whole step's, before partitioning and rematerialisation
  hbm_bytes: float
  kernels: int
  collectives: dict            # opcode -> (count, bytes)
  compile_seconds: float


def target_mesh(target: accelerators.Target, devices: int) -> Any:
  """A 1-D "data" mesh over `devices` deviceless devices of `target`."""
  from jax.experimental import topologies
  if target.kind == accelerators.GPU:
    per_host = min(devices, target.per_host)
    topology = topologies.get_topology_desc(
        platform="cuda", target_config=accelerators.gpu_target_config(target),
        topology=f"1x{devices // per_host}x{per_host}")
  else:
    name, bounds, chip_config = accelerators.tpu_topology(target, devices)
    topology = topologies.get_topology_desc(
        topology_name=name, platform="tpu", chip_config_name=chip_config,
        chips_per_host_bounds=bounds, num_slices=1, wrap=(False, False, False))
  return topologies.make_mesh(topology, (devices,), (parallel.DATA_AXIS,))


def _sharded(tree: Any, sharding: Any) -> Any:
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def _plain(tree: Any) -> Any:
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), tree)


def compile_step(jitted: Any, args: tuple, *, kind: str, devices: int) -> StepReport:
  """Compiles `jitted` (a `jax.jit` over the target mesh) for `args` (abstract, sharded)."""
  unoptimised = jax.jit(jitted.__wrapped__).lower(*map(_plain, args)).cost_analysis()
  start = time.perf_counter()
  try:
    compiled = jitted.lower(*args).compile()
  except jax.errors.JaxRuntimeError as error:
    found = _HBM_OOM.search(str(error))
    if not found:
      raise
    size = lambda value, unit: float(value) * 2**(30 if unit == "G" else 20)
    raise DoesNotFit(size(*found.group(1, 2)), size(*found.group(3, 4))) from None
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  program = hlo_stats.stats(compiled.as_text())
  cost = compiled.cost_analysis() if kind == accelerators.TPU else None
  return StepReport(
      argument_bytes=memory.argument_size_in_bytes, peak_bytes=step_memory.peak_bytes(memory),
      flops=cost["flops"] if cost else unoptimised["flops"] / devices,
      unoptimised_flops=unoptimised["flops"],
      hbm_bytes=cost["bytes accessed"] if cost else program.traffic_bytes,
      kernels=program.kernels, collectives=dict(program.collectives), compile_seconds=seconds)


def compile_steps(task: Any, config: Any, mesh: Any, *, num_classes: int, kind: str,
                  with_eval: bool = True) -> tuple[StepReport, Optional[StepReport], int]:
  """(train step, eval step (None without `with_eval`), state bytes per device) of `config`
  compiled over `mesh`; DoesNotFit (with the state's bytes) when the compiler refuses the train
  step."""
  experiment = task.build_experiment(config, num_classes=num_classes, steps_per_epoch=1,
                                     mesh=mesh)
  state = experiment.abstract_state()
  train_batch, eval_batch = task.abstract_batches(config, config.batch_size)
  batch = parallel.batch_sharding(mesh)
  devices = mesh.devices.size
  state_bytes = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(state))
  try:
    train = compile_step(task.compile_train_step(experiment),
                         (state, _sharded(train_batch, batch)), kind=kind, devices=devices)
  except DoesNotFit as refusal:
    refusal.state_bytes = state_bytes
    raise
  if not with_eval:
    return train, None, state_bytes
  evaluation = compile_step(task.compile_eval_step(experiment),
                            (state.variables, _sharded(eval_batch, batch)), kind=kind,
                            devices=devices)
  return train, evaluation, state_bytes
