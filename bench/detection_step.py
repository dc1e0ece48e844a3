"""Training and inference step time of FPN Faster (or Mask) R-CNN with none/SE/LCT backbones.

Each variant is the real detector of configs/detection/base.py with a ResNet-50 (by default) and
the given attention, its real training step (the detection task's compiled step: RPN and R-CNN
targets, losses, backward, the SGD update with frozen stem and layer1 and clipping) and its
inference (`detection.steps.detect_step`: proposals, box head, per-class NMS), on random
uint8 images with a few random ground-truth boxes (and, for the mask detectors, bit-packed
instance masks filling them) at the paper's landscape canvas (800x1344). Variants are
alternated in one process (A B C A B C ...) after `--warmup` untimed rounds and the table gives
median step times, ratios to the plain backbone and the compile times of the first step
(lowering and XLA compilation); the timing helpers are bench.train_step's.

The compile check runs the jitted training step on a batch of each canvas, twice, and counts
the programs JAX compiled: one per canvas, never one per batch.

  python -m bench.detection_step [--canvas=800,1344 --batch=1 --steps=3 --attentions=none,se,lct
      --detector=faster_rcnn|cascade_rcnn|mask_rcnn|cascade_mask_rcnn]
"""

import datetime
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from bench import machine
from bench import timing
from configs.detection import base
from lct_flax.tasks.detection import TASK as DETECTION
from lct_flax.detection import steps

_CANVAS = flags.DEFINE_list("canvas", ["800", "1344"], "Canvas height,width of the timed steps.")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per step.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per variant.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps per variant after the compile.")
_MODEL = flags.DEFINE_string("model", "resnet50", "Backbone.")
_DETECTOR = flags.DEFINE_enum(
    "detector", "faster_rcnn", ["faster_rcnn", "cascade_rcnn", "mask_rcnn", "cascade_mask_rcnn"],
    "Detector.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_ATTENTIONS = flags.DEFINE_list("attentions", ["none", "se", "lct"], "Attention blocks.")
_CHECK_CANVASES = flags.DEFINE_list(
    "check_canvases", ["256", "384"], "Canvas (h,w) of the compile check; its transpose is the "
    "second canvas.")

NUM_CLASSES = 80
NUM_BOXES = 8


def make_config(attention: str):
  config = base.get_config(_DETECTOR.value, attention)
  config.model.name = _MODEL.value
  config.half_precision = _DTYPE.value == "bfloat16"
  return config


def make_batch(canvas, batch_size: int) -> dict:
  """Random images filling the canvas, NUM_BOXES random boxes of 32-256 px per image (and their
  instance masks, bit-packed as the input pipeline gives them, for the mask detectors)."""
  rng = np.random.default_rng(0)
  height, width = canvas
  corner = rng.uniform(0, 0.6, (batch_size, NUM_BOXES, 2)) * [width, height]
  size = rng.uniform(32, 256, (batch_size, NUM_BOXES, 2))
  boxes = np.concatenate([corner, np.minimum(corner + size, [width - 1, height - 1])], -1)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (batch_size, height, width, 3)), jnp.uint8),
           "image_shape": jnp.asarray([canvas] * batch_size, jnp.int32),
           "boxes": jnp.asarray(boxes, jnp.float32),
           "labels": jnp.asarray(rng.integers(0, NUM_CLASSES, (batch_size, NUM_BOXES)),
                                 jnp.int32),
           "valid": jnp.ones((batch_size, NUM_BOXES), bool)}
  if "mask" in _DETECTOR.value:
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    x1, y1, x2, y2 = (boxes[..., i, None, None].astype(int) for i in range(4))
    inside = (ys >= y1) & (ys <= y2) & (xs >= x1) & (xs <= x2)
    batch["masks"] = jnp.asarray(np.packbits(inside.astype(np.uint8), axis=-1))
  return batch


def build(attention: str, canvas, batch: dict, inference: bool) -> timing.Variant:
  """Initialises the state and compiles the training step (or the inference) of one variant."""
  config = make_config(attention)
  config.dataset.canvases = (tuple(canvas),)
  experiment = DETECTION.build_experiment(config, num_classes=NUM_CLASSES, steps_per_epoch=1000)
  state = experiment.init_state()
  if inference:
    step = DETECTION.compile_eval_step(experiment)
    state, batch = state.variables, steps.device_batch(batch, steps.EVAL_KEYS)
  else:
    step = DETECTION.compile_train_step(experiment)
  compiled, lower_s, compile_s = timing.compile_timed(step, state, batch)
  return timing.Variant(
      name=attention, dtype=_DTYPE.value, model=f"{_DETECTOR.value} {_MODEL.value}",
      attention=attention, jitted=step, step=compiled, state=state, lower_times=[lower_s],
      compile_times=[compile_s], memory=compiled.memory_analysis())


def compiles_once_per_canvas() -> tuple[int, int]:
  """(programs compiled, canvases seen) over two batches of each of two canvases."""
  size = tuple(int(v) for v in _CHECK_CANVASES.value)
  config = make_config("lct")
  config.dataset.canvases = (size, size[::-1])
  experiment = DETECTION.build_experiment(config, num_classes=NUM_CLASSES, steps_per_epoch=1000)
  step = DETECTION.compile_train_step(experiment)
  state = experiment.init_state()
  for canvas in (size, size[::-1], size, size[::-1]):
    state, _ = step(state, make_batch(canvas, 1))
  jax.block_until_ready(state)
  return step._cache_size(), 2  # pylint: disable=protected-access


def main(argv):
  del argv
  canvas = tuple(int(v) for v in _CANVAS.value)
  batch = make_batch(canvas, _BATCH.value)
  print(f"\n## Detection step, {datetime.date.today().isoformat()}\n")
  print(f"Device: {jax.devices()[0].device_kind} ({jax.default_backend()}); CPU: "
        f"{machine.cpu_model()}, {os.cpu_count()} cores. jax {jax.__version__}. Command: "
        f"`{' '.join(['python -m bench.detection_step', *sys.argv[1:]])}`.")
  for inference in (False, True):
    variants = [build(a, canvas, batch, inference) for a in _ATTENTIONS.value]
    load = os.getloadavg()[0]
    timed = steps.device_batch(batch, steps.EVAL_KEYS) if inference else batch
    timing.time_alternated(variants, timed, _WARMUP.value, _STEPS.value)
    kind = ("inference (`detect_step`)" if inference else "training step (`train_step`)")
    timing.print_table(
        f"{kind}, {_DTYPE.value}, {_BATCH.value} image(s) of {canvas[0]}x{canvas[1]}, "
        f"{_STEPS.value} timed steps after {_WARMUP.value} warm-up, load average {load:.1f} at "
        f"the start:", variants, _BATCH.value)
    del variants
  programs, canvases = compiles_once_per_canvas()
  print(f"\nCompile check: {programs} program(s) for {canvases} canvases over 4 training steps "
        f"({'once per canvas' if programs == canvases else 'NOT once per canvas'}).")
  print(f"Process peak RSS: {timing.peak_rss_mib():.0f} MiB.")


if __name__ == "__main__":
  app.run(main)
