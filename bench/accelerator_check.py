"""The plan against the chip: on a machine with a GPU or TPU, the real training steps of ResNet-50
(none, SE, LCT) in bfloat16 at 32 images per device (the paper's 256 over an 8-GPU host) and of
Faster R-CNN R-101-FPN at mmdetection's 2 images per device, timed on one device and printed
beside `lct_flax.plan`'s estimates for the same per-device batch (bench/plan_results.json, written
by bench/plan_table.py): step time, images/s and peak memory (`memory_stats()`).

  python bench/accelerator_check.py --target=h100    # on the machine: about 5 minutes
  python bench/accelerator_check.py --dry            # anywhere: tiny models, the same code path
  [--rows=lct_resnet50,faster_rcnn] [--steps=10]

Each row runs in a process of its own (a device's peak memory is the process's so far, and the
process that measures holds the device): it builds the task's experiment on one local device,
compiles `Task.compile_train_step`
(the function `train.py` runs), feeds it one synthetic batch of the plan's shapes (random pixels;
detection: a few random boxes per image) and times `--steps` steps after one warm-up step.
`--dry` shrinks the models and images so that a CPU runs every row in about a minute (ResNet-18
backbones at width 1/4 or 1/8, 32 px images or 64x96 canvases, 2 per device); its
measurements say nothing about any chip, and the plan's columns stay those of `--target`.
Without a GPU or TPU and without `--dry` it refuses in one line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lct_flax import parallel
from lct_flax import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The dry run's models: ResNet-18 backbones at width 1/4 (LCT: 4 groups of its 16 channels).
DRY_CLASSIFIER = {"model.name": "resnet18", "model.width": 0.25, "dataset.image_size": 32,
                  "batch_size": 2}
# (row of bench/plan_results.json, config module, overrides of the real check, of the dry one)
ROWS = tuple((name, f"configs.{name}", {"half_precision": True, "batch_size": 32},
              {**DRY_CLASSIFIER, **({"model.attention_kwargs.groups": 4} if "lct" in name else {})})
             for name in ("resnet50", "se_resnet50", "lct_resnet50")) + (
    ("faster_rcnn_r101_fpn_1x", "configs.detection.faster_rcnn_r101_fpn_1x", {"batch_size": 2},
     {"model.name": "resnet18", "model.width": 0.125, "model.fpn_channels": 16,
      "model.fc_hidden": 32,
      "model.rpn_proposals_train": 64, "model.rpn_proposals_test": 32,
      "model.rcnn_samples": 32, "model.max_candidates": 64, "dataset.img_scale": (80, 64),
      "dataset.canvases": ((64, 96), (96, 64)), "batch_size": 2}),)
BOXES_PER_IMAGE = 8


def row_config(module: str, overrides: dict):
  config = importlib.import_module(module).get_config()
  for key, value in overrides.items():
    *sections, name = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[name] = value
  return config


def synthetic_batch(abstract: dict, num_classes: int, rng: np.random.Generator) -> dict:
  """Values of the shapes `abstract` gives: random pixels and labels; detection's images fill
  their canvas and carry BOXES_PER_IMAGE random boxes each."""
  batch = {}
  for key, spec in abstract.items():
    shape, dtype = spec.shape, spec.dtype
    if key == "image":
      value = rng.integers(0, 256, shape)
    elif key in ("label", "labels"):
      value = rng.integers(0, num_classes, shape)
    elif key == "image_shape":
      value = np.broadcast_to(abstract["image"].shape[1:3], shape)
    elif key == "valid":
      value = np.broadcast_to(np.arange(shape[1]) < BOXES_PER_IMAGE, shape)
    elif key == "boxes":
      height, width = abstract["image"].shape[1:3]
      corner = rng.uniform(0, 0.6, shape[:2] + (2,)) * (width, height)
      value = np.concatenate([corner, corner + rng.uniform(0.1, 0.4, shape[:2] + (2,))
                              * (width, height)], axis=-1)
    else:
      value = np.zeros(shape)
    batch[key] = jnp.asarray(value, dtype)
  return batch


def measure(module: str, overrides: dict, steps: int) -> dict:
  """Compile seconds, seconds per step and peak bytes of one row's train step on one device."""
  config = row_config(module, overrides)
  task = tasks.of_config(config)
  num_classes = task.planned_classes[config.dataset.name]
  mesh = parallel.create_mesh(jax.local_devices()[:1])
  experiment = task.build_experiment(config, num_classes=num_classes, steps_per_epoch=1,
                                     mesh=mesh)
  train_batch, _ = task.abstract_batches(config, config.batch_size)
  batch = synthetic_batch(train_batch, num_classes, np.random.default_rng(0))
  step = task.compile_train_step(experiment)
  state = experiment.init_state()
  start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  stats = jax.local_devices()[0].memory_stats() or {}
  return {"batch": config.batch_size, "compile_seconds": compile_seconds,
          "step_seconds": (time.perf_counter() - start) / steps,
          "peak_bytes": stats.get("peak_bytes_in_use")}


def table(results: dict, plans: dict, target: str) -> str:
  """Measured beside planned, a row per config."""
  ms = lambda s: "-" if s is None else f"{s * 1e3:.1f}"
  gib = lambda b: "-" if b is None else f"{b / 2**30:.2f}"
  rate = lambda batch, s: "-" if s is None or batch is None else f"{batch / s:,.0f}"
  lines = [f"| row | batch / device | step ms | plan ms ({target}) | images/s | plan images/s "
           f"per device | peak GiB | plan peak GiB | compile s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, measured in results.items():
    plan = plans.get(f"{name}/{target}", {})
    batch = measured["batch"]
    lines.append(
        f"| {name} | {batch} | {ms(measured['step_seconds'])} | "
        f"{ms(plan.get('est_step_seconds'))} | {rate(batch, measured['step_seconds'])} | "
        f"{rate(plan.get('per_device_batch'), plan.get('est_step_seconds'))} | "
        f"{gib(measured['peak_bytes'])} | {gib(plan.get('peak_bytes_per_device'))} | "
        f"{measured['compile_seconds']:.1f} |")
  return "\n".join(lines)


def measure_row(name: str, dry: bool, steps: int) -> None:
  """The child's part: one row measured, printed as one JSON line (with the device)."""
  device = jax.local_devices()[0]
  if device.platform == "cpu" and not dry:
    raise SystemExit("error: no GPU or TPU here; run this on the machine to check, or pass --dry "
                     "to check the script with tiny models on this CPU.")
  _, module, real, tiny = next(row for row in ROWS if row[0] == name)
  print(json.dumps({"device": f"{device.device_kind} ({device.platform})",
                    **measure(module, tiny if dry else real, steps)}))


def measured_in_child(name: str, dry: bool, steps: int) -> dict:
  """`measure_row` in a process of its own; its one-line error, or the last line it wrote to
  stderr, ends this one."""
  child = subprocess.run([sys.executable, os.path.abspath(__file__), f"--row={name}",
                          f"--steps={steps}", *(["--dry"] if dry else [])],
                         capture_output=True, text=True)
  if child.returncode:
    last = (child.stderr.strip().splitlines() or ["no output"])[-1]
    raise SystemExit(last if last.startswith("error: ") else f"error: row {name}: {last}")
  return json.loads(child.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--target", default="h100", help="the plan rows to compare with")
  parser.add_argument("--dry", action="store_true", help="tiny models: checks the script")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rows", default="", help="comma-separated substrings: only those rows")
  parser.add_argument("--plans", default=os.path.join(REPO, "bench", "plan_results.json"))
  parser.add_argument("--row", help=argparse.SUPPRESS)   # a child's one row
  args = parser.parse_args()
  if args.row:
    return measure_row(args.row, args.dry, args.steps)
  plans = json.load(open(args.plans)) if os.path.exists(args.plans) else {}
  wanted = [part for part in args.rows.split(",") if part]
  results = {}
  for name, *_ in ROWS:
    if wanted and not any(part in name for part in wanted):
      continue
    results[name] = measured_in_child(name, args.dry, args.steps)
    if len(results) == 1:
      print(f"{results[name]['device']}{', dry run' if args.dry else ''}", flush=True)
    print(f"{name}: {results[name]['step_seconds'] * 1e3:.1f} ms per step", flush=True)
  print(table(results, plans, args.target))


if __name__ == "__main__":
  main()
