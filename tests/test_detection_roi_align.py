"""RoIAlign against a NumPy bilinear-sampling transcription of the kernels (mmdet v1.0's and
torchvision's, aligned and not), FPN level assignment in both conventions, multi-level pooling,
and torchvision's roi_align / MultiScaleRoIAlign where installed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lct_flax.detection import roi_align
from detection_reference import jitted, random_boxes, torchvision_modules


def numpy_bilinear(image, y, x):
  """The kernels' bilinear_interpolate on an (H, W, C) map, float64."""
  height, width = image.shape[:2]
  if y < -1.0 or y > height or x < -1.0 or x > width:
    return np.zeros(image.shape[-1])
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= height - 1:
    y_low = y_high = height - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= width - 1:
    x_low = x_high = width - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  hy, hx = 1 - ly, 1 - lx
  return (hy * hx * image[y_low, x_low] + hy * lx * image[y_low, x_high]
          + ly * hx * image[y_high, x_low] + ly * lx * image[y_high, x_high])


def numpy_roi_align(features, boxes, indices, scale, out, ratio, mode):
  """RoIAlign of each box, one sample at a time (the CUDA/C++ kernels' loops)."""
  features = features.astype(np.float64)
  result = np.zeros((len(boxes), out, out, features.shape[-1]))
  for r, (box, index) in enumerate(zip(boxes.astype(np.float64), indices)):
    x1, y1, x2, y2 = box
    if mode == "mmdet_v1":                      # mmdet/ops/roi_align/src/roi_align_kernel.cu
      sx, sy = x1 * scale, y1 * scale
      w, h = max((x2 + 1) * scale - sx, 0.0), max((y2 + 1) * scale - sy, 0.0)
    elif mode == "legacy":                      # torchvision aligned=False
      sx, sy = x1 * scale, y1 * scale
      w, h = max(x2 * scale - sx, 1.0), max(y2 * scale - sy, 1.0)
    else:                                       # torchvision aligned=True
      sx, sy = x1 * scale - 0.5, y1 * scale - 0.5
      w, h = x2 * scale - 0.5 - sx, y2 * scale - 0.5 - sy
    bin_w, bin_h = w / out, h / out
    for ph in range(out):
      for pw in range(out):
        total = 0.0
        for iy in range(ratio):
          y = sy + ph * bin_h + (iy + 0.5) * bin_h / ratio
          for ix in range(ratio):
            x = sx + pw * bin_w + (ix + 0.5) * bin_w / ratio
            total = total + numpy_bilinear(features[index], y, x)
        result[r, ph, pw] = total / (ratio * ratio)
  return result


def test_roi_align_matches_numpy_in_every_mode():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 9, 13, 3)).astype(np.float32)
  boxes = np.concatenate([random_boxes(rng, 10, size=50, max_side=30),
                          np.array([[-10, -6, 8, 9], [40, 30, 70, 60], [5, 5, 5.5, 5.2],
                                    [20, 10, 18, 8]], np.float32)])
  indices = rng.integers(0, 2, len(boxes))
  for mode in roi_align.ROI_ALIGN_MODES:
    for out, ratio, chunk in ((3, 2, None), (2, 1, 5)):          # 14 RoIs: chunks 5, 5, 4
      ours = jitted(roi_align.roi_align, spatial_scale=0.25, output_size=out,
                    sampling_ratio=ratio, mode=mode, chunk=chunk)(features, boxes, indices)
      expected = numpy_roi_align(features, boxes, indices, 0.25, out, ratio, mode)
      assert ours.shape == (len(boxes), out, out, 3)
      np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5, err_msg=mode)


def test_modes_differ_where_the_kernels_do():
  """The +1 end (mmdet v1) and the half-pixel shift (aligned) change the result."""
  features = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
  box, index = np.array([[1.0, 1.0, 4.0, 4.0]], np.float32), np.zeros(1, np.int32)
  pooled = {m: np.asarray(jitted(roi_align.roi_align, spatial_scale=1.0, output_size=1,
                                 sampling_ratio=2, mode=m)(features, box, index))
            for m in roi_align.ROI_ALIGN_MODES}
  # legacy: samples at 1.75 and 3.25 -> mean 2.5 per axis; value = 8 y + x = 22.5
  np.testing.assert_allclose(pooled["legacy"].ravel(), [22.5])
  np.testing.assert_allclose(pooled["mmdet_v1"].ravel(), [27.0])   # samples 2.0, 4.0 -> 3.0
  np.testing.assert_allclose(pooled["aligned"].ravel(), [18.0])    # samples 1.25, 2.75 -> 2.0


def numpy_levels(boxes, mapping):
  """mmdet v1 map_roi_levels / torchvision LevelMapper over P2-P5, float64."""
  levels = []
  for x1, y1, x2, y2 in boxes.astype(np.float64):
    if mapping == "mmdet_v1":
      level = np.floor(np.log2(np.sqrt((x2 - x1 + 1) * (y2 - y1 + 1)) / 56 + 1e-6))
    else:
      level = np.floor(4 + np.log2(np.sqrt((x2 - x1) * (y2 - y1)) / 224) + 1e-6) - 2
    levels.append(int(np.clip(level, 0, 3)))
  return levels


def test_level_mapping_both_conventions():
  sides = [10, 55, 56, 111, 112, 223, 224, 447, 448, 900]
  boxes = np.array([[0, 0, s - 1, s - 1] for s in sides] + [[0, 0, s, s] for s in sides],
                   np.float32)
  mmdet = np.asarray(roi_align.map_roi_levels(boxes, (4, 8, 16, 32), "mmdet_v1"))
  torch_like = np.asarray(roi_align.map_roi_levels(boxes, (4, 8, 16, 32), "torchvision"))
  np.testing.assert_array_equal(mmdet, numpy_levels(boxes, "mmdet_v1"))
  np.testing.assert_array_equal(torch_like, numpy_levels(boxes, "torchvision"))
  # a 112 x 112 box: level 1 in both, but [0, 111] is 112 px only with mmdet's +1
  np.testing.assert_array_equal(mmdet[:10], [0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(torch_like[10:], [0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(torch_like[:10], [0, 0, 0, 0, 0, 1, 1, 2, 2, 3])


def multiscale_boxes(rng, n, size=60):
  """Boxes of scales spread evenly in log from 8 to 600 px (aspect ratios 1/2..2, in random
  order), so that every FPN level gets some."""
  xy = rng.uniform(-20, size, (n, 2))
  aspect = np.exp(rng.uniform(-0.35, 0.35, n))
  scale = rng.permutation(np.geomspace(8, 600, n))
  wh = np.stack([scale * aspect, scale / aspect], 1)
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def fpn_features(rng, canvas=(64, 96), strides=(4, 8, 16, 32), channels=4, images=2):
  return [rng.normal(size=(images, canvas[0] // s, canvas[1] // s, channels)).astype(np.float32)
          for s in strides]


@pytest.mark.parametrize("mode,mapping", [("mmdet_v1", "mmdet_v1"), ("legacy", "torchvision"),
                                          ("aligned", "torchvision")])
def test_multilevel_roi_align_pools_each_roi_from_its_level(mode, mapping):
  rng = np.random.default_rng(1)
  strides = (4, 8, 16, 32)
  features = fpn_features(rng)
  boxes = np.stack([multiscale_boxes(rng, 12) for _ in range(2)])
  pooled = jitted(roi_align.multilevel_roi_align, strides=strides, output_size=3,
                  sampling_ratio=2, mode=mode, level_mapping=mapping, chunk=7)(features, boxes)
  assert pooled.shape == (2, 12, 3, 3, 4)
  for image in range(2):
    levels = numpy_levels(boxes[image], mapping)
    assert len(set(levels)) >= 3
    for r, level in enumerate(levels):
      expected = numpy_roi_align(features[level][image:image + 1], boxes[image, r:r + 1], [0],
                                 1.0 / strides[level], 3, 2, mode)[0]
      np.testing.assert_allclose(pooled[image, r], expected, rtol=1e-5, atol=1e-5)


def test_multilevel_roi_align_compiles_once_and_keeps_bfloat16():
  traces = []

  @jax.jit
  def pool(features, boxes):
    traces.append(1)
    return roi_align.multilevel_roi_align(features, boxes, strides=(4, 8, 16, 32),
                                          output_size=7, mode="mmdet_v1",
                                          level_mapping="mmdet_v1")

  rng = np.random.default_rng(2)
  for _ in range(3):
    features = [jnp.asarray(f, jnp.bfloat16) for f in fpn_features(rng)]
    out = pool(features, np.stack([multiscale_boxes(rng, 8)] * 2))
  assert len(traces) == 1 and pool._cache_size() == 1
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 8, 7, 7, 4)


def test_roi_align_gradient_reaches_the_sampled_pixels():
  features = jnp.zeros((1, 6, 6, 1))
  box = jnp.array([[1.0, 1.0, 3.0, 3.0]] * 3)
  grad = jax.jit(jax.grad(lambda f: roi_align.roi_align(
      f, box, jnp.zeros(3, jnp.int32), spatial_scale=1.0, output_size=2, chunk=2).sum()))(
          features)
  grad = np.asarray(grad)[0, :, :, 0]
  np.testing.assert_allclose(grad.sum(), 12.0, rtol=1e-6)  # 3 RoIs x 4 bins, weights sum to 1
  assert grad[0].sum() == 0 and grad[:, 0].sum() == 0 and grad[4:].sum() == 0


def test_bad_sampling_ratio_is_one_clear_error():
  with pytest.raises(ValueError, match="sampling_ratio must be >= 1"):
    roi_align.roi_align(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4)), jnp.zeros(1, jnp.int32),
                        spatial_scale=1.0, sampling_ratio=0)


def test_against_torchvision_roi_align_and_multiscale():
  torch, torchvision = torchvision_modules()
  rng = np.random.default_rng(3)
  features = rng.normal(size=(2, 10, 12, 5)).astype(np.float32)
  boxes = random_boxes(rng, 15, size=40, max_side=30)
  indices = rng.integers(0, 2, 15)
  rois = torch.from_numpy(np.concatenate([indices[:, None].astype(np.float32), boxes], 1))
  nchw = torch.from_numpy(features.transpose(0, 3, 1, 2).copy())
  for aligned, mode in ((False, "legacy"), (True, "aligned")):
    expected = torchvision.ops.roi_align(nchw, rois, (7, 7), spatial_scale=0.25,
                                         sampling_ratio=2, aligned=aligned).numpy()
    ours = jitted(roi_align.roi_align, spatial_scale=0.25, output_size=7, sampling_ratio=2,
                  mode=mode)(features, boxes, indices)
    np.testing.assert_allclose(ours, expected.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)

  canvas = (128, 160)
  fpn = fpn_features(rng, canvas=canvas, images=1)
  per_image = multiscale_boxes(rng, 20, size=120)
  per_image[:, 2:] = np.minimum(per_image[:, 2:], 200)
  pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
  expected = pooler({str(i): torch.from_numpy(f.transpose(0, 3, 1, 2).copy())
                     for i, f in enumerate(fpn)}, [torch.from_numpy(per_image)], [canvas])
  ours = jitted(roi_align.multilevel_roi_align, strides=(4, 8, 16, 32), mode="legacy",
                level_mapping="torchvision")(fpn, per_image[None])
  np.testing.assert_allclose(ours[0], expected.numpy().transpose(0, 2, 3, 1), rtol=1e-5,
                             atol=1e-5)
