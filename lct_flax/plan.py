"""Before you rent hardware: `python -m lct_flax.plan --config=CONFIG --target=NAME [--devices=N]
[--json] [--scaling] [--config.KEY=VALUE ...]` compiles a run's real train and eval steps for GPUs
or TPUs that this machine does not have, and says per device whether the step fits, how fast it
can go, and what it needs from the host.

Targets: `accelerators.TARGETS` (h100, h200, a100; v4, v5e, v5p, v6e), `--devices` one ordinary
host by default (8 GPUs, v5e-8, v4-8, ...). The compiles are `deviceless`'s: the steps `train.py`
runs, with its shardings, the config's global batch split over the devices, in the config's
dtype. The report, per device: the state (parameters, BatchNorm statistics, optimizer) and the
peak bytes against the memory the runtime lets a step use (`accelerators.USABLE_FRACTION`);
FLOPs per example, and whether the compiler rematerialised to fit (compiled FLOPs above the
unoptimised count; TPU only, the GPU compiler does not); HBM bytes; kernels; the collectives
(BatchNorm statistics and gradient all-reduces); a roofline estimate of the step time (the larger
of FLOPs / peak and bytes / bandwidth) and images/s; the host CPU cores the input pipeline
needs at that rate (where the task has measured its CPU time per image: classification). With
`--scaling`, the train step is compiled again for one device at the same per-device batch: data
parallelism divides the work when each device's FLOPs and HBM bytes are that device's (within
`SCALING_TOLERANCE`; `divides_work` in the JSON). Exit codes: 0 fits, 3 does not fit (with the
largest per-device batch that would, estimated linearly from this compile), 1 / 2 a bad command
(one `error:` line, before any compile).

The compile-only packages (requirements-plan.txt, `bash scripts/setup.sh --plan`) are put on the
path here, and only here: JAX runs on the CPU (JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Optional

from absl import app
from absl import flags
from ml_collections import config_flags

from lct_flax import accelerators
from lct_flax import cli
from lct_flax import config_schema
from lct_flax import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = os.environ.get("LCT_PLAN_PACKAGES", os.path.join(REPO, ".plan-packages"))
DOES_NOT_FIT = 3
# A TPU step rematerialised when its compiled FLOPs exceed the unoptimised count by more than the
# TPU's own way of counting adds (up to 15% on these steps) while its peak is near the memory it
# may use (XLA rematerialises only then).
EXTRA_FLOPS_TOLERANCE = 0.2
REMAT_PRESSURE = 0.9
# Data parallelism divides the work when each device's FLOPs and HBM bytes are one device's at the
# same per-device batch, within this fraction (the gradient all-reduce adds a little traffic).
SCALING_TOLERANCE = 0.05

FLAGS = flags.FLAGS


class PlanError(ValueError):
  """A command the plan cannot run."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """One config on one target, per device (see the module docstring)."""
  config: str
  task: str
  target: str
  devices: int
  dtype: str
  global_batch: int
  per_device_batch: int
  device_memory_bytes: int
  usable_bytes: int
  state_bytes_per_device: int
  peak_bytes_per_device: int
  fits: bool
  largest_fitting_batch_per_device: Optional[int]
  # Where the compiler refused the step (TPU: too large even rematerialised), the peak is the
  # state plus the temporaries it asked for, and the rest is None.
  argument_bytes_per_device: Optional[int] = None
  eval_peak_bytes_per_device: Optional[int] = None
  rematerialized: Optional[bool] = None
  extra_flops_fraction: Optional[float] = None
  flops_per_example: Optional[float] = None
  unoptimised_flops_per_example: Optional[float] = None
  bytes_per_device: Optional[float] = None
  kernels: Optional[int] = None
  collectives: Optional[dict] = None
  est_step_seconds: Optional[float] = None
  est_images_per_second: Optional[float] = None
  input_cores_per_host: Optional[float] = None
  compile_seconds: Optional[float] = None
  # With --scaling: one device's train step at the same per-device batch, and whether each of
  # `devices` does that much work and no more (FLOPs compared on TPUs, where they are compiled).
  one_device_flops_per_example: Optional[float] = None
  one_device_bytes: Optional[float] = None
  divides_work: Optional[bool] = None

  @property
  def needed_bytes(self) -> int:
    """The larger of the train and eval steps' peaks: what must fit."""
    return max(self.peak_bytes_per_device, self.eval_peak_bytes_per_device or 0)


def use_compile_packages() -> None:
  """Puts the compile-only packages on the path and JAX on the CPU; before JAX starts a backend
  (it discovers the GPU plugin then)."""
  if not os.path.isdir(os.path.join(PACKAGES, "libtpu")):
    raise PlanError(f"the deviceless GPU and TPU compilers are not installed in {PACKAGES}; "
                    f"run `bash scripts/setup.sh --plan` (requirements-plan.txt, about 1.3 GB).")
  if PACKAGES not in sys.path:
    sys.path.insert(0, PACKAGES)
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # two plans may compile at once
  for variable, value in (("TPU_ACCELERATOR_TYPE", "v5litepod-8"),
                          ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_SKIP_MDS_QUERY", "1")):
    os.environ.setdefault(variable, value)   # libtpu looks for a TPU VM's metadata otherwise


def plan(config: Any, config_name: str, target: accelerators.Target, devices: int, *,
         num_classes: Optional[int] = None, scaling: bool = False) -> Plan:
  """Compiles `config`'s steps for `devices` x `target` and reports them (the experiment checks
  the config); with `scaling`, also the train step on one device at the same per-device batch."""
  from lct_flax import deviceless
  from lct_flax import parallel
  task = tasks.of_config(config)
  if num_classes is None:
    num_classes = task.planned_classes.get(config.dataset.name)
    if num_classes is None:
      raise PlanError(f"the number of classes of dataset {config.dataset.name!r} is not known "
                      f"here; pass --num_classes=N.")
  mesh = deviceless.target_mesh(target, devices)
  parallel.check_batch_size(config.batch_size, mesh)
  basics = dict(config=config_name, task=task.name, target=target.name, devices=devices,
                dtype="bfloat16" if config.get("half_precision") else "float32",
                global_batch=config.batch_size, per_device_batch=config.batch_size // devices,
                device_memory_bytes=target.memory_bytes, usable_bytes=target.usable_bytes)
  try:
    train, evaluation, state_bytes = deviceless.compile_steps(task, config, mesh,
                                                              num_classes=num_classes,
                                                              kind=target.kind)
  except deviceless.DoesNotFit as refusal:
    return _refused(basics, refusal)
  report = _report(basics, config, task, target, train, evaluation, state_bytes)
  if not scaling:
    return report
  return dataclasses.replace(report, **_one_device(task, config, target, num_classes, report))


def _one_device(task: Any, config: Any, target: accelerators.Target, num_classes: int,
                report: Plan) -> dict:
  """The --scaling fields: `report`'s per-device work against one device's at its batch."""
  from lct_flax import deviceless
  single = config.copy_and_resolve_references()
  single.batch_size = report.per_device_batch
  one, _, _ = deviceless.compile_steps(task, single, deviceless.target_mesh(target, 1),
                                       num_classes=num_classes, kind=target.kind,
                                       with_eval=False)
  close = lambda mine, theirs: abs(mine / theirs - 1) <= SCALING_TOLERANCE
  flops = one.flops / report.per_device_batch
  divides = close(report.bytes_per_device, one.hbm_bytes) and (
      target.kind != accelerators.TPU or close(report.flops_per_example, flops))
  return dict(one_device_flops_per_example=flops, one_device_bytes=one.hbm_bytes,
              divides_work=divides)


def _largest_batch(per_device: int, state_bytes: float, step_bytes: float,
                   usable_bytes: float) -> int:
  """The per-device batch that fits if a step's bytes beyond the state grow with the batch."""
  per_example = max(step_bytes - state_bytes, 1) / per_device
  return max(int((usable_bytes - state_bytes) // per_example), 0)


def _refused(basics: dict, refusal: Any) -> Plan:
  """The plan of a train step the (TPU) compiler refused as too large even rematerialised."""
  peak = int(refusal.state_bytes + refusal.required)
  return Plan(**basics, state_bytes_per_device=refusal.state_bytes, peak_bytes_per_device=peak,
              fits=False, largest_fitting_batch_per_device=_largest_batch(
                  basics["per_device_batch"], refusal.state_bytes, peak, basics["usable_bytes"]))


def _report(basics, config, task, target, train, evaluation, state_bytes) -> Plan:
  devices, per_device = basics["devices"], basics["per_device_batch"]
  peak = max(train.peak_bytes, evaluation.peak_bytes)
  fits = peak <= target.usable_bytes
  largest = None if fits else _largest_batch(per_device, state_bytes, train.peak_bytes,
                                             target.usable_bytes)
  step_seconds = max(train.flops / target.peak_flops,
                     train.hbm_bytes / target.hbm_bytes_per_second)
  images_per_second = config.batch_size / step_seconds
  remat = extra = None
  if target.kind == accelerators.TPU:   # the GPU compiler does not rematerialise
    extra = train.flops * devices / train.unoptimised_flops - 1
    remat = extra > EXTRA_FLOPS_TOLERANCE and peak >= REMAT_PRESSURE * target.usable_bytes
  cores = None
  if task.input_cpu_ms_per_image is not None:
    per_host = images_per_second * min(devices, target.per_host) / devices
    cores = per_host * task.input_cpu_ms_per_image / 1e3
  return Plan(
      **basics, state_bytes_per_device=state_bytes,
      argument_bytes_per_device=train.argument_bytes, peak_bytes_per_device=train.peak_bytes,
      eval_peak_bytes_per_device=evaluation.peak_bytes, fits=fits,
      largest_fitting_batch_per_device=largest, rematerialized=remat,
      extra_flops_fraction=extra, flops_per_example=train.flops / per_device,
      unoptimised_flops_per_example=train.unoptimised_flops / config.batch_size,
      bytes_per_device=train.hbm_bytes, kernels=train.kernels,
      collectives={k: {"count": c, "bytes": b} for k, (c, b) in train.collectives.items()},
      est_step_seconds=step_seconds, est_images_per_second=images_per_second,
      input_cores_per_host=cores,
      compile_seconds=train.compile_seconds + evaluation.compile_seconds)


def describe(p: Plan) -> str:
  """The report as lines of text."""
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  fraction = p.usable_bytes / p.device_memory_bytes
  lines = [
      f"{p.config} ({p.task}, {p.dtype}) on {p.devices} x {p.target}: global batch "
      f"{p.global_batch}, {p.per_device_batch} per device",
      f"  state (parameters, statistics, optimizer): {gib(p.state_bytes_per_device)} per device",
      f"  peak: train {gib(p.peak_bytes_per_device)}"
      + ("" if p.eval_peak_bytes_per_device is None else
         f", eval {gib(p.eval_peak_bytes_per_device)}")
      + f" of {gib(p.usable_bytes)} usable ({gib(p.device_memory_bytes)} x {fraction:.2f}): "
      + ("fits" if p.fits else "does NOT fit"),
  ]
  if p.flops_per_example is None:
    lines.append("  (the compiler refused the step as too large even rematerialised)")
    return "\n".join(lines)
  lines += [
      f"  FLOPs per example: {p.flops_per_example / 1e9:.3f} G compiled, "
      f"{p.unoptimised_flops_per_example / 1e9:.3f} G unoptimised" + _extra_flops(p),
      f"  HBM bytes per step: {gib(p.bytes_per_device)}; kernels: {p.kernels}; collectives: "
      + (", ".join(f"{k} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)"
                   for k, v in p.collectives.items()) or "none"),
      f"  roofline: {p.est_step_seconds * 1e3:.2f} ms per step, "
      f"{p.est_images_per_second:,.0f} images/s",
  ]
  if p.input_cores_per_host is not None:
    lines.append(f"  input pipeline: {p.input_cores_per_host:.1f} host CPU cores per host at that "
                 f"rate (at this machine's CPU ms per image)")
  if p.divides_work is not None:
    lines.append(f"  data parallelism: per device {p.bytes_per_device / p.one_device_bytes:.3f}x "
                 f"the HBM bytes and {p.flops_per_example / p.one_device_flops_per_example:.3f}x "
                 f"the FLOPs of one device at {p.per_device_batch} per device: "
                 + ("divides the work" if p.divides_work else "does NOT divide the work"))
  lines.append(f"  compile: {p.compile_seconds:.1f} s")
  return "\n".join(lines)


def _extra_flops(p: Plan) -> str:
  if p.rematerialized is None:
    return ""
  return f" ({'' if p.rematerialized else 'not '}rematerialised)"


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("target", None, f"One of {', '.join(accelerators.TARGETS)}.")
  flags.DEFINE_integer("devices", None, "Devices to compile for (default: one host's).")
  flags.DEFINE_integer("num_classes", None, "Classes, where the dataset's are not known here.")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")
  flags.DEFINE_bool("scaling", False, "Also compile one device's train step at the same "
                    "per-device batch, and say whether data parallelism divides the work.")
  flags.mark_flags_as_required(["config", "target"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  target = accelerators.get(FLAGS.target)
  devices = accelerators.check_devices(target, FLAGS.devices)
  config_schema.validate(FLAGS.config)   # every task's checks, before the compilers load
  use_compile_packages()
  result = plan(FLAGS.config, config_flags.get_config_filename(FLAGS["config"]), target, devices,
                num_classes=FLAGS.num_classes, scaling=FLAGS.scaling)
  print(json.dumps(dataclasses.asdict(result)) if FLAGS.json else describe(result))
  if not result.fits:
    print(f"error: the step needs {result.needed_bytes / 2**30:.2f} GiB per device, "
          f"more than {target.name}'s usable {result.usable_bytes / 2**30:.2f} GiB; at most about "
          f"{result.largest_fitting_batch_per_device} examples per device would fit (a linear "
          f"estimate): --config.batch_size={result.largest_fitting_batch_per_device * devices}.",
          file=sys.stderr)
    sys.exit(DOES_NOT_FIT)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
