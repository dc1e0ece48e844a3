"""Compile and run times of the detection ops at Faster R-CNN sizes (800 x 1344 canvas, FPN).

Each op is jitted on its own, lowered and compiled (timed), then run `--runs` times after one
untimed run; the table gives the median wall time, the median CPU time of this process (all
threads: unlike wall time it hardly depends on what else runs on the machine) and XLA's
temporaries. Inputs are random with realistic geometry (box sides log-uniform 16..600 px):

* nms: one FPN level's RPN NMS, 2000 boxes -> at most 2000, IoU 0.7 (mmdet v1 +1 boxes);
* rpn_proposals: training proposals of one image from all five levels (268,569 anchors,
  nms_pre = max_num = 2000, mmdet v1 convention);
* multiclass_nms: test-time detections, 1000 RoIs x 80 classes, top 4000 candidates, 100 kept;
* multilevel_roi_align: 512 RoIs x 256 channels, 7 x 7, from P2-P5 of one image, forward and
  forward + backward (gradient to the features), `--chunk` RoIs at a time and all at once;
* rpn_targets / rcnn_targets: one image's training targets (100 gt; 2000 proposals).

Prints a markdown section for bench/RESULTS.md:

  python -m bench.detection_ops [--runs=5 --chunk=32]     (from the repository root)
"""

import datetime
import functools
import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from lct_flax.detection import anchors as anchors_lib
from lct_flax.detection import boxes
from lct_flax.detection import postprocess
from lct_flax.detection import roi_align
from lct_flax.detection import targets
from lct_flax.detection.convention import Convention
from bench import machine

_RUNS = flags.DEFINE_integer("runs", 5, "Timed runs per op.")
_CHUNK = flags.DEFINE_integer("chunk", roi_align.DEFAULT_CHUNK, "RoIs pooled per step.")

CANVAS = (800, 1344)
STRIDES = (4, 8, 16, 32, 64)
MiB = 2**20


def random_boxes(rng, n, size=CANVAS):
  """(n, 4) float32 boxes inside the canvas, sides log-uniform in 16..600 px."""
  wh = np.exp(rng.uniform(np.log(16), np.log(600), (n, 2)))
  xy = rng.uniform(0, 1, (n, 2)) * (np.array(size[::-1]) - wh)
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def measure(function, *args):
  """(compile s, median wall ms, median CPU ms, temporaries MiB) of jitted `function`."""
  start = time.perf_counter()
  compiled = jax.jit(function).lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  walls, cpus = [], []
  for _ in range(_RUNS.value):
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*args))
    walls.append(1000 * (time.perf_counter() - wall))
    cpus.append(1000 * (time.process_time() - cpu))
  memory = compiled.memory_analysis()
  temp = memory.temp_size_in_bytes / MiB if memory is not None else float("nan")
  return compile_s, statistics.median(walls), statistics.median(cpus), temp


def cases(rng):
  """(name, shapes, function, args) of every timed op."""
  conv = Convention.mmdet_v1()
  level_anchors = anchors_lib.level_anchors(CANVAS, STRIDES, geometry=conv.anchor_geometry)
  all_anchors = np.concatenate(level_anchors)
  image_shape = np.array([800, 1333])
  gt = random_boxes(rng, 100)
  gt_valid = np.arange(100) < 60
  yield ("nms", "2000 boxes -> 2000",
         lambda b, s: boxes.nms(b, s, jnp.ones(2000, bool), 0.7, 2000, offset=1.0),
         (random_boxes(rng, 2000), rng.uniform(size=2000).astype(np.float32)))
  logits = [rng.normal(size=len(a)).astype(np.float32) for a in level_anchors]
  deltas = [rng.normal(0, 0.2, (len(a), 4)).astype(np.float32) for a in level_anchors]
  yield ("rpn_proposals", f"{len(all_anchors)} anchors, 5 levels -> 2000",
         lambda l, d, s: postprocess.rpn_proposals(
             l, d, level_anchors, s, coder=conv.box_coder(), nms_pre=2000, nms_post=2000,
             max_num=2000), (logits, deltas, image_shape))
  per_class = np.broadcast_to(random_boxes(rng, 1000)[:, None], (1000, 80, 4))
  scores = rng.dirichlet(np.full(81, 0.05), 1000).astype(np.float32)[:, 1:]
  yield ("multiclass_nms", "1000 RoIs x 80 classes -> 100",
         lambda b, s: postprocess.multiclass_nms(
             b, s, jnp.ones(1000, bool), score_threshold=0.05, iou_threshold=0.5,
             max_output=100, max_candidates=4000, offset=1.0), (per_class, scores))
  features = [rng.normal(size=(1, -(-CANVAS[0] // s), -(-CANVAS[1] // s), 256)).astype(
      np.float32) for s in STRIDES[:4]]
  rois = random_boxes(rng, 512)[None]
  for chunk in (_CHUNK.value, None):
    pool = functools.partial(roi_align.multilevel_roi_align, strides=STRIDES[:4],
                             mode=conv.roi_align_mode, level_mapping=conv.roi_level_mapping,
                             chunk=chunk)
    label = f"512 RoIs x 256 ch, 7x7, chunk {chunk or 'all'}"
    yield "multilevel_roi_align", label, pool, (features, rois)
    yield ("multilevel_roi_align fwd+bwd", label,
           jax.grad(lambda f, r, pool=pool: jnp.sum(pool(f, r))), (features, rois))
  yield ("rpn_targets", f"{len(all_anchors)} anchors, 100 gt",
         lambda key, valid, g, gv: targets.rpn_targets(
             key, all_anchors, valid, g, gv, assigner=conv.rpn_assigner(),
             sampler=conv.rpn_sampler(), coder=conv.box_coder()),
         (jax.random.key(0), anchors_lib.inside_image(all_anchors, image_shape, 0.0), gt,
          gt_valid))
  yield ("rcnn_targets", "2000 proposals + 100 gt -> 512",
         functools.partial(targets.rcnn_targets, assigner=conv.rcnn_assigner(),
                           sampler=conv.rcnn_sampler(),
                           coder=conv.box_coder(stds=(0.1, 0.1, 0.2, 0.2))),
         (jax.random.key(1), random_boxes(rng, 2000), np.ones(2000, bool), gt,
          rng.integers(0, 80, 100), gt_valid))


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  rows = []
  for name, shapes, function, args in cases(rng):
    rows.append((name, shapes) + measure(function, *args))
  print(f"\n## Detection ops, {datetime.date.today().isoformat()}\n")
  print(f"CPU: {machine.cpu_model()}, {os.cpu_count()} cores; JAX {jax.__version__} on "
        f"{jax.devices()[0].platform}. `python -m bench.detection_ops --runs={_RUNS.value} "
        f"--chunk={_CHUNK.value}`; median of {_RUNS.value} runs after one untimed run.\n")
  print("| op | shapes | compile s | run ms (wall) | run ms (CPU) | temporaries MiB |")
  print("|---|---|---:|---:|---:|---:|")
  for name, shapes, compile_s, wall, cpu, temp in rows:
    print(f"| {name} | {shapes} | {compile_s:.2f} | {wall:.1f} | {cpu:.1f} | {temp:.0f} |")


if __name__ == "__main__":
  app.run(main)
