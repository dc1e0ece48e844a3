"""Devices, mesh and shardings for data-parallel training; multi-process start-up.

One mesh axis, "data", spans every device of every process. Batches are sharded along it, the
train state is replicated. Each process feeds its host-local slice of the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """How to start `jax.distributed`.

  `mode`: "off" (one process), "auto" (`jax.distributed.initialize()` reads its settings from the
  cluster: SLURM, TPU pods, Open MPI, ...), or "explicit" (coordinator address, process count and
  id given here, e.g. several processes on one machine).
  """
  mode: str = "off"
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  initialization_timeout: int = 300


def initialize_distributed(settings: DistributedSettings) -> None:
  """Starts `jax.distributed` as `settings` say; call before any other JAX call."""
  if settings.mode == "off":
    return
  if settings.mode == "auto":
    jax.distributed.initialize(initialization_timeout=settings.initialization_timeout)
  elif settings.mode == "explicit":
    missing = [name for name in ("coordinator_address", "num_processes", "process_id")
               if getattr(settings, name) is None]
    if missing:
      raise ValueError(f"multi-process start needs {', '.join('--' + m for m in missing)} "
                       f"(or --distributed=auto on a SLURM/TPU cluster).")
    jax.distributed.initialize(settings.coordinator_address, settings.num_processes,
                               settings.process_id,
                               initialization_timeout=settings.initialization_timeout)
  else:
    raise ValueError(f"unknown distributed mode {settings.mode!r}; use off, auto or explicit.")
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def create_mesh(devices: Optional[Iterable[Any]] = None) -> Mesh:
  """A 1-D mesh with axis "data" over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def process_of(process_index: Optional[int] = None, process_count: Optional[int] = None, *,
               error: type = ValueError) -> tuple[int, int]:
  """(index, count) of the process among those that feed a global batch: JAX's own unless
  given; the caller's `error` (its one-line error type) for an index outside the count."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise error(f"process_index={process_index} not in [0, {process_count}).")
  return process_index, process_count


def local_batch_size(global_batch_size: int, process_count: int, *,
                     error: type = ValueError) -> int:
  """Each process's share of a global batch; the caller's `error` unless the global batch is a
  positive multiple of the process count."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise error(f"Global batch size {global_batch_size} is not a positive multiple of the "
                f"process count {process_count}.")
  return global_batch_size // process_count


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """Refuses a global batch that does not split evenly over the mesh's devices."""
  n = mesh.devices.size
  if global_batch_size % n:
    suggestion = n * max(1, global_batch_size // n)
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {n} devices; "
                     f"use a multiple of {n} (e.g. --config.batch_size={suggestion}).")


def host_local(tree: Any, mesh: Mesh) -> Any:
  """This process's rows (NumPy) of global arrays sharded along "data" over `mesh`: the inverse
  of assembling a global batch from each process's host-local batch."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  local = multihost_utils.global_array_to_host_local_array(tree, mesh, PartitionSpec(DATA_AXIS))
  return jax.tree.map(np.asarray, local)
