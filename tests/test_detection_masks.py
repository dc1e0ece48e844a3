"""Instance masks (issue 14): COCO segmentations decoded as pycocotools does, carried onto the
canvas bit-packed through resize, flip and padding, Mask R-CNN's targets against NumPy
transcriptions of mmdetection v1's crop-and-resize and torchvision's RoIAlign, pasted masks
against a NumPy paste (and torchvision's own where installed), the mask head, and Cascade Mask
R-CNN's losses and stage-averaged test masks in bfloat16."""

import collections
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from lct_flax.datasets import coco_layout
from lct_flax.detection import data
from lct_flax.detection import detector
from lct_flax.detection import mask_targets
from lct_flax.detection import heads
from lct_flax.detection import segmentation
from lct_flax.detection import settings
from detection_reference import jitted, random_boxes, torchvision_modules
from test_detection_roi_align import numpy_roi_align


# ---------------------------------------------------------------------------------------------
# Decoding and the canvas.

def test_polygons_rle_and_crowd_regions_decode_as_pycocotools_measures_them(coco_shapes_layout):
  coco = COCO(os.path.join(coco_shapes_layout.root, coco_layout.SPLITS["train"][1]))
  kinds = collections.Counter()
  for annotation in coco.dataset["annotations"]:
    image = coco.imgs[annotation["image_id"]]
    rle = coco.annToRLE(annotation)   # pycocotools' own reading of the annotation
    encoded = json.dumps(annotation["segmentation"])
    kind = "crowd" if annotation["iscrowd"] else "polygon"
    compressed = dict(mask_utils.encode(np.asfortranarray(mask_utils.decode(rle))))
    compressed["counts"] = compressed["counts"].decode()   # as COCO files hold compressed RLE
    for form, segm in ((kind, encoded), ("rle", compressed)):
      mask = segmentation.decode(segm, image["height"], image["width"])
      assert mask.dtype == np.uint8 and mask.shape == (image["height"], image["width"])
      assert int(mask.sum()) == int(mask_utils.area(rle)) == annotation["area"]
      if mask.any():
        ys, xs = np.nonzero(mask)
        np.testing.assert_array_equal(
            [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1], mask_utils.toBbox(rle))
      kinds[form] += 1
  assert kinds["crowd"] >= 3 and kinds["polygon"] >= 30 and kinds["rle"] == len(
      coco.dataset["annotations"])
  assert not segmentation.decode("[]", 5, 7).any()


def nearest(source, target):
  """cv2 INTER_NEAREST's source index of each target pixel, one at a time."""
  return [min(math.floor(i * source / target), source - 1) for i in range(target)]


def test_canvas_masks_are_resized_flipped_padded_and_packed():
  rng = np.random.default_rng(0)
  original, resized, canvas = (37, 53), (60, 85), (64, 96)
  blobs = [(rng.uniform(size=original) < p).astype(np.uint8) for p in (0.3, 0.5, 0.7)]
  segmentations = []
  for blob in blobs:
    rle = mask_utils.encode(np.asfortranarray(blob))
    segmentations.append(json.dumps({"size": rle["size"], "counts": rle["counts"].decode()}))
  for flip in (False, True):
    packed = segmentation.canvas_masks(segmentations, [False, True, False],
                                       original_shape=original, resized_shape=resized,
                                       flip=flip, canvas=canvas, max_instances=5)
    assert packed.dtype == np.uint8 and packed.shape == (5, 64, 12)
    unpacked = np.unpackbits(packed, axis=-1)
    for slot in range(5):
      expected = np.zeros(canvas, np.uint8)
      if slot in (0, 2):   # the crowd slot and the padding slots stay empty
        rows, cols = nearest(original[0], resized[0]), nearest(original[1], resized[1])
        for y in range(resized[0]):
          for x in range(resized[1]):
            expected[y, x] = blobs[slot][rows[y], cols[resized[1] - 1 - x if flip else x]]
      np.testing.assert_array_equal(unpacked[slot], expected, err_msg=f"{slot} {flip}")


def test_train_batches_carry_each_instances_mask_inside_its_box(shapes_config):
  iterator = data.create_train_iterator(shapes_config, global_batch_size=4, seed=3,
                                        with_masks=True)
  for batch in (next(iterator) for _ in range(4)):
    b, height, width = batch["image"].shape[:3]
    m = batch["valid"].shape[1]
    assert batch["masks"].shape == (b, m, height, width // 8)
    unpacked = np.unpackbits(batch["masks"], axis=-1).astype(bool)
    for n in range(b):
      for i in range(m):
        if not batch["valid"][n, i]:
          assert not unpacked[n, i].any()   # crowd and padding
          continue
        ys, xs = np.nonzero(unpacked[n, i])
        extent = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
        assert np.abs(extent - batch["boxes"][n, i]).max() < 2.5   # the polygon's extent
        assert ys.max() < batch["image_shape"][n, 0] and xs.max() < batch["image_shape"][n, 1]
  without = next(data.create_train_iterator(shapes_config, global_batch_size=4, seed=3))
  assert "masks" not in without


# ---------------------------------------------------------------------------------------------
# Mask targets.

def numpy_crop_and_resize(mask, roi, size):
  """mmdet v1 mask_target_single of one RoI: clip, truncate, crop, cv2 INTER_LINEAR resize
  (per output pixel: source (i + 0.5) * side / size - 0.5, clamped), round half up."""
  height, width = mask.shape
  x1, y1, x2, y2 = np.clip(roi, 0, [width - 1, height - 1] * 2).astype(np.int32)
  w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
  crop = mask[y1:y1 + h, x1:x1 + w].astype(np.float64)

  def axis(i, side):
    f = (i + 0.5) * side / size - 0.5
    s = math.floor(f)
    f -= s
    if s < 0:
      f, s = 0.0, 0
    if s >= side - 1:
      f, s = 0.0, side - 1
    return s, min(s + 1, side - 1), f

  out = np.zeros((size, size))
  for i in range(size):
    y0, y1_, fy = axis(i, h)
    for j in range(size):
      x0, x1_, fx = axis(j, w)
      out[i, j] = ((1 - fy) * ((1 - fx) * crop[y0, x0] + fx * crop[y0, x1_])
                   + fy * ((1 - fx) * crop[y1_, x0] + fx * crop[y1_, x1_]))
  return np.floor(out + 0.5)


def instance_masks(rng, count, height, width):
  """uint8 (count, height, width) ellipses, one per instance."""
  yy, xx = np.mgrid[:height, :width]
  result = np.zeros((count, height, width), np.uint8)
  for mask in result:
    cy, cx, ry, rx = rng.uniform(5, height - 5), rng.uniform(5, width - 5), *rng.uniform(3, 20, 2)
    mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 1
  return result


@pytest.fixture(scope="module")
def target_case():
  """Instance masks on a 48x64 canvas whose image is 40x60, and RoIs over them (thin, partly
  outside the image, degenerate, exactly on pixels)."""
  rng = np.random.default_rng(0)
  full = np.zeros((3, 48, 64), np.uint8)
  full[:, :40, :60] = instance_masks(rng, 3, 40, 60)
  rois = np.concatenate([random_boxes(rng, 12, size=55, max_side=30),
                         np.array([[-5, -3, 20, 18], [50, 30, 70, 50], [10, 10, 10.5, 30],
                                   [0, 0, 59, 39], [12, 7, 39, 34], [30, 20, 25, 15]],
                                  np.float32)])
  instance = rng.integers(0, 3, len(rois))
  return full, np.packbits(full, axis=-1), rois, instance


def test_mmdet_mask_targets_are_the_crop_resized_and_rounded(target_case):
  full, packed, rois, instance = target_case
  ours = jitted(mask_targets.mask_targets, size=28, mode="mmdet_v1")(
      packed, rois, instance, np.array([40, 60], np.int32))
  expected = np.stack([numpy_crop_and_resize(full[i], roi, 28)
                       for roi, i in zip(rois, instance)])
  np.testing.assert_array_equal(np.asarray(ours), expected)
  assert 0.05 < expected.mean() < 0.95


def test_torchvision_mask_targets_are_the_roi_aligned_mask(target_case):
  full, packed, rois, instance = target_case
  ours = np.asarray(jitted(mask_targets.mask_targets, size=28, mode="torchvision")(
      packed, rois, instance, np.array([40, 60], np.int32)))
  image_masks = full[:, :40, :60, None].astype(np.float32)   # torchvision's: unpadded
  expected = numpy_roi_align(image_masks, rois, instance, 1.0, 28, 2, "legacy")[..., 0]
  # float32 sample positions up to 60 px carry 4e-6 px of rounding (float64 in the NumPy one).
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
  assert 0.05 < expected.mean() < 0.95 and 0 < np.mean((ours > 0) & (ours < 1))
  try:
    torch, torchvision = torchvision_modules()
  except pytest.skip.Exception:
    return
  boxes = torch.from_numpy(np.concatenate([instance[:, None], rois], 1).astype(np.float32))
  theirs = torchvision.ops.roi_align(torch.from_numpy(image_masks).permute(0, 3, 1, 2), boxes,
                                     (28, 28), 1.0, sampling_ratio=2, aligned=False)
  np.testing.assert_allclose(ours, theirs[:, 0].numpy(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Pasting into the image.

def numpy_paste(probabilities, box, height, width, mode):
  """One detection's paste, pixel by pixel: mmdet v1 get_seg_masks or torchvision
  paste_mask_in_image (expand_masks + expand_boxes), bilinear with half-pixel centres."""
  size = probabilities.shape[0]
  if mode == "torchvision":
    probabilities = np.pad(probabilities, 1)
    scale = np.float32((size + 2) / size)
    half = (box[2:] - box[:2]) * np.float32(0.5) * scale
    centre = (box[2:] + box[:2]) * np.float32(0.5)
    box = np.concatenate([centre - half, centre + half])
  x1, y1, x2, y2 = (int(v) for v in box)   # truncation towards zero, as astype / .to(int64)
  w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
  source = probabilities.shape[0]

  def axis(i, side):
    f = max((i + 0.5) * source / side - 0.5, 0.0)
    low = min(math.floor(f), source - 1)
    return low, min(low + 1, source - 1), (f - low if low < source - 1 else 0.0)

  image = np.zeros((height, width))
  for y in range(max(y1, 0), min(y1 + h, height)):
    y0, y1_, fy = axis(y - y1, h)
    for x in range(max(x1, 0), min(x1 + w, width)):
      x0, x1_, fx = axis(x - x1, w)
      image[y, x] = ((1 - fy) * ((1 - fx) * probabilities[y0, x0] + fx * probabilities[y0, x1_])
                     + fy * ((1 - fx) * probabilities[y1_, x0]
                             + fx * probabilities[y1_, x1_]))
  return image


def test_pasted_masks_match_a_numpy_paste_in_both_conventions():
  rng = np.random.default_rng(0)
  probabilities = rng.uniform(size=(7, 28, 28)).astype(np.float32)
  boxes = np.concatenate([random_boxes(rng, 4, size=40, max_side=35),
                          np.array([[-3.7, 30.2, 20.9, 49.8], [45.5, 2.5, 60.5, 3.2],
                                    [10, 10, 10, 10]], np.float32)])
  for mode in segmentation.PASTE_MODES:
    pasted = segmentation.paste_masks(probabilities, boxes, (48, 56), mode=mode)
    assert pasted.dtype == np.float32 and pasted.shape == (7, 48, 56)
    for d in range(7):
      expected = numpy_paste(probabilities[d], boxes[d], 48, 56, mode)
      np.testing.assert_allclose(pasted[d], expected, rtol=0, atol=2e-6, err_msg=f"{mode} {d}")
    binary = segmentation.paste_masks(probabilities, boxes, (48, 56), mode=mode, threshold=0.5)
    np.testing.assert_array_equal(binary, pasted > 0.5)
  rles = segmentation.encode(binary)
  assert all(isinstance(rle["counts"], str) and rle["size"] == [48, 56] for rle in rles)
  np.testing.assert_array_equal(np.moveaxis(mask_utils.decode(rles), -1, 0), binary)
  try:
    torch, _ = torchvision_modules()
  except pytest.skip.Exception:
    return
  from torchvision.models.detection.roi_heads import paste_masks_in_image
  theirs = paste_masks_in_image(torch.from_numpy(probabilities)[:, None],
                                torch.from_numpy(boxes), (48, 56), padding=1)
  np.testing.assert_allclose(pasted, theirs[:, 0].numpy(), rtol=0, atol=2e-6)


def test_result_segmentations_paste_into_the_original_image():
  """mmdet v1 divides the resized-image box by the scale factor and truncates."""
  probabilities = np.ones((1, 28, 28), np.float32)
  rles = segmentation.result_segmentations(probabilities, np.array([[20, 30, 59, 89]]),
                                           np.array([2.0, 2.0]), (60, 50), "mmdet_v1")
  decoded = mask_utils.decode(rles[0])
  assert decoded.shape == (60, 50) and decoded.sum() == 20 * 30
  ys, xs = np.nonzero(decoded)
  assert (xs.min(), ys.min(), xs.max(), ys.max()) == (10, 15, 29, 44)


# ---------------------------------------------------------------------------------------------
# The mask head and Cascade Mask R-CNN.

def test_mask_head_deconvolution_and_initialisation():
  head = heads.MaskHead(num_classes=3, hidden=32)
  features = np.random.default_rng(0).normal(size=(2, 3, 14, 14, 8)).astype(np.float32)
  variables = head.init(jax.random.key(0), features)
  assert head.apply(variables, features).shape == (2, 3, 28, 28, 4)
  params = variables["params"]
  for name, fan_out in (("conv_0", 32 * 9), ("conv_3", 32 * 9), ("deconv", 32 * 4),
                        ("logits", 4)):
    kernel = np.asarray(params[name]["kernel"])
    assert kernel.std() == pytest.approx(math.sqrt(2 / fan_out), rel=0.15), name
    assert not np.asarray(params[name]["bias"]).any()
  deconv = heads.Deconv2x2(5)
  x = np.random.default_rng(1).normal(size=(1, 3, 4, 6)).astype(np.float32)
  kernel_vars = deconv.init(jax.random.key(1), x)
  kernel = np.asarray(kernel_vars["params"]["kernel"])   # (2, 2, out, in)
  out = np.asarray(deconv.apply(kernel_vars, x))
  assert out.shape == (1, 6, 8, 5)
  for i, j, a, b in ((0, 0, 0, 0), (2, 3, 1, 0), (1, 2, 0, 1)):   # out[2i + a, 2j + b]
    np.testing.assert_allclose(out[0, 2 * i + a, 2 * j + b], kernel[a, b] @ x[0, i, j],
                               rtol=1e-5, atol=1e-6)


def test_cascade_mask_rcnn_in_bfloat16_trains_and_averages_its_stages_masks():
  model = detector.create_detector(
      "resnet18", num_classes=3, width=0.125, fpn_channels=16, fc_hidden=32, mask_hidden=8,
      cascade=True, masks=True, dtype=jnp.bfloat16, rcnn_samples=32, max_detections=10,
      max_candidates=64, rpn_train=settings.ProposalSettings(64, 64, 64),
      rpn_test=settings.ProposalSettings(32, 32, 32))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  image_shape = np.array([[64, 60], [56, 64]], np.int32)
  instances = np.zeros((2, 4, 64, 64), np.uint8)
  instances[:, 0, 10:40, 12:30] = 1
  instances[:, 1, 40:60, 30:50] = 1
  batch = {"image": images, "image_shape": image_shape,
           "boxes": np.tile(np.array([[12, 10, 29, 39], [30, 40, 49, 59], [0] * 4, [0] * 4],
                                     np.float32), (2, 1, 1)),
           "labels": np.tile(np.array([1, 2, 0, 0], np.int32), (2, 1)),
           "valid": np.tile(np.array([True, True, False, False]), (2, 1)),
           "masks": np.packbits(instances, axis=-1)}
  variables = model.init(jax.random.key(0), images, method="init_variables")

  def run(module, batch):
    loss, metrics = module.losses(batch, jax.random.key(1))
    detections = module(batch["image"], batch["image_shape"])
    features = module.pyramid(batch["image"], batch["image_shape"], train=False)
    index = (detections.labels + 1)[..., None, None, None]
    per_stage = [jax.nn.sigmoid(jnp.take_along_axis(
        module.roi_heads.mask_stage(stage, features, detections.boxes), index, axis=-1)[..., 0])
                 for stage in range(3)]
    return loss, metrics, detections, per_stage

  loss, metrics, detections, per_stage = jax.jit(
      lambda v, b: nn.apply(run, model, mutable=["batch_stats"])(v, b)[0])(variables, batch)
  parts = {k: float(v) for k, v in metrics.items()}
  assert np.isfinite(float(loss)) and all(np.isfinite(v) for v in parts.values())
  weighted = sum(w * (parts[f"stage{i}_cls"] + parts[f"stage{i}_box"] + parts[f"stage{i}_mask"])
                 for i, w in enumerate((1.0, 0.5, 0.25)))
  assert float(loss) == pytest.approx(parts["rpn_cls"] + parts["rpn_box"] + weighted, rel=1e-5)
  assert detections.masks.shape == (2, 10, 28, 28) and detections.masks.dtype == jnp.float32
  np.testing.assert_allclose(detections.masks, sum(per_stage) / 3, rtol=1e-6, atol=1e-6)
  assert not np.allclose(per_stage[0], per_stage[2])
