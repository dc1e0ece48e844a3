"""Shared pieces of the detection-op tests: random boxes, and torchvision imported safely.

torchvision.ops imports torch._dynamo, which loads triton's shared library; loaded after
TensorFlow (which tests/conftest.py imports through the input pipeline) that library crashes
the process (a segmentation fault while loading libtriton). torch works without triton, so the
tests hide it before importing torchvision.
"""

import functools
import math
import sys

import jax
import numpy as np
import pytest


def torchvision_modules():
  """(torch, torchvision) or a pytest skip when they are not installed."""
  torch = pytest.importorskip("torch")
  sys.modules.setdefault("triton", None)
  torchvision = pytest.importorskip("torchvision")
  import torchvision.ops  # noqa: F401  (the submodule the tests use)
  import torchvision.models.detection  # noqa: F401
  return torch, torchvision


def jitted(function, **static):
  """`function` with keyword arguments `static` bound, jitted: one compilation per shape is
  much quicker in a test than JAX's op-by-op dispatch of a large function."""
  return jax.jit(functools.partial(function, **static))


def random_boxes(rng, n, size=100.0, min_side=1.0, max_side=40.0):
  """(n, 4) float32 boxes with corners in [0, size) and sides in [min_side, max_side)."""
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(min_side, max_side, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def numpy_iou(a, b, offset, mode="iou"):
  """mmdet v1 bbox_overlaps (offset 1) / torchvision box_iou (offset 0), one pair at a time."""
  out = np.zeros((len(a), len(b)), np.float64)
  for i, p in enumerate(a.astype(np.float64)):
    for j, q in enumerate(b.astype(np.float64)):
      w = max(min(p[2], q[2]) - max(p[0], q[0]) + offset, 0.0)
      h = max(min(p[3], q[3]) - max(p[1], q[1]) + offset, 0.0)
      area_p = (p[2] - p[0] + offset) * (p[3] - p[1] + offset)
      area_q = (q[2] - q[0] + offset) * (q[3] - q[1] + offset)
      out[i, j] = w * h / (area_p + area_q - w * h) if mode == "iou" else w * h / area_p
  return out


def numpy_decode(p, d, offset, means, stds, clamp_below, clip=math.log(1000 / 16)):
  """mmdet v1 delta2bbox (offset 1, clamp both ways) / torchvision decode (offset 0, clamp max)."""
  p, d = p.astype(np.float64), d.astype(np.float64) * np.asarray(stds) + np.asarray(means)
  dw = np.clip(d[:, 2], -clip if clamp_below else None, clip)
  dh = np.clip(d[:, 3], -clip if clamp_below else None, clip)
  pw, ph = p[:, 2] - p[:, 0] + offset, p[:, 3] - p[:, 1] + offset
  gx = (p[:, 0] + p[:, 2]) / 2 + pw * d[:, 0]
  gy = (p[:, 1] + p[:, 3]) / 2 + ph * d[:, 1]
  gw, gh = pw * np.exp(dw), ph * np.exp(dh)
  return np.stack([gx - gw / 2 + offset / 2, gy - gh / 2 + offset / 2,
                   gx + gw / 2 - offset / 2, gy + gh / 2 - offset / 2], 1)


def numpy_greedy_nms(b, scores, valid, thr, offset, groups=None):
  """Greedy NMS: highest score first (stable for ties), suppress IoU > thr within a group."""
  order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
  keep = []
  for i in order:
    if all(numpy_iou(b[i:i + 1], b[k:k + 1], offset)[0, 0] <= thr
           or (groups is not None and groups[i] != groups[k]) for k in keep):
      keep.append(i)
  return keep


def clustered_boxes(rng, n):
  """Boxes around a few centres, so that NMS has much to suppress."""
  centres = rng.uniform(20, 80, (5, 2))[rng.integers(0, 5, n)]
  half = rng.uniform(5, 15, (n, 2))
  jitter = rng.normal(0, 3, (n, 2))
  return np.concatenate([centres + jitter - half, centres + jitter + half], 1).astype(np.float32)
