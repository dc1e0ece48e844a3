"""torchvision Faster R-CNN and Mask R-CNN interop (issue 13, item 7; issue 14, item 7): the
state dict mapping, its refusals, `detect`, the coordinate-trick NMS, and equality with
torchvision's own detections (and masks)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from lct_flax.detection import boxes as boxes_lib
from lct_flax.detection import detect
from lct_flax.detection import detector
from lct_flax.detection import inference
from lct_flax.detection import interop
from lct_flax.detection import roi_align
from lct_flax.detection import settings
from lct_flax.detection.convention import Convention
from detection_reference import numpy_greedy_nms, torchvision_modules

ARCH = "fasterrcnn_resnet50_fpn"
HEIGHT, WIDTH = 320, 416
# Names and shapes torchvision 0.29's fasterrcnn_resnet50_fpn(num_classes=91) state dict has,
# one per part (in all 295 tensors with FrozenBatchNorm2d, 348 with BatchNorm2d).
TORCHVISION_SHAPES = {
    "backbone.body.conv1.weight": (64, 3, 7, 7),
    "backbone.body.bn1.running_var": (64,),
    "backbone.body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.body.layer4.2.bn3.bias": (2048,),
    "backbone.fpn.inner_blocks.0.0.weight": (256, 256, 1, 1),
    "backbone.fpn.inner_blocks.3.0.bias": (256,),
    "backbone.fpn.layer_blocks.2.0.weight": (256, 256, 3, 3),
    "rpn.head.conv.0.0.weight": (256, 256, 3, 3),
    "rpn.head.cls_logits.weight": (3, 256, 1, 1),
    "rpn.head.bbox_pred.bias": (12,),
    "roi_heads.box_head.fc6.weight": (1024, 12544),
    "roi_heads.box_head.fc7.weight": (1024, 1024),
    "roi_heads.box_predictor.cls_score.weight": (91, 1024),
    "roi_heads.box_predictor.bbox_pred.weight": (364, 1024),
}


@functools.lru_cache(maxsize=None)
def random_torchvision_state_dict(seed=0, arch=ARCH):
  """A torchvision-layout state dict of the full-size detector (current names, FrozenBatchNorm2d)
  with seeded random values, made through our own mapping of random flax variables."""
  rng = np.random.default_rng(seed)
  abstract = interop.abstract_variables(interop.torchvision_detector(arch))
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32), abstract)
  return interop.to_torchvision_detector_state_dict(variables), variables


def test_state_dict_names_and_round_trip_are_exact():
  state_dict, variables = random_torchvision_state_dict()
  assert len(state_dict) == 295
  for name, shape in TORCHVISION_SHAPES.items():
    assert state_dict[name].shape == shape, name
  assert not any(name.endswith("num_batches_tracked") for name in state_dict)
  model, loaded = interop.load_torchvision_detector(state_dict, ARCH)
  assert model.settings.num_classes == 90 and model.settings.convention == Convention.torchvision()
  assert model.backbone.bn_epsilon == 0.0
  flat, flat_loaded = (traverse_util.flatten_dict(v) for v in (variables, loaded))
  assert flat.keys() == flat_loaded.keys()
  for path, value in flat.items():
    np.testing.assert_array_equal(np.asarray(flat_loaded[path]), value, err_msg=str(path))
  again = interop.to_torchvision_detector_state_dict(loaded)
  assert again.keys() == state_dict.keys()
  for name, value in state_dict.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_older_torchvision_names_and_batchnorm_counters_load():
  state_dict, variables = random_torchvision_state_dict()
  older = {}
  for name, value in state_dict.items():   # torchvision < 0.13 (FPN and RPNHead version 1)
    name = re.sub(r"^(backbone\.fpn\.\w+_blocks\.\d+)\.0\.", r"\1.", name)
    older[re.sub(r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv.", name)] = value
  assert {"backbone.fpn.inner_blocks.0.weight", "backbone.fpn.layer_blocks.3.bias",
          "rpn.head.conv.weight", "rpn.head.conv.bias"} <= older.keys()
  older["backbone.body.bn1.num_batches_tracked"] = np.array(5, np.int64)
  _, loaded = interop.load_torchvision_detector(older, ARCH)
  for path, value in traverse_util.flatten_dict(variables).items():
    np.testing.assert_array_equal(np.asarray(traverse_util.flatten_dict(loaded)[path]), value)


def test_fc6_reads_torchs_channel_major_flattening():
  """torch's TwoMLPHead flattens RoI features (C, 7, 7); ours are NHWC (7, 7, C)."""
  state_dict, _ = random_torchvision_state_dict()
  state_dict = dict(state_dict)
  channels, size = 256, 7
  c, y, x = np.meshgrid(np.arange(channels), np.arange(size), np.arange(size), indexing="ij")
  code = (c * 100 + y * 10 + x).reshape(1, -1).astype(np.float32)   # torch column order
  state_dict["roi_heads.box_head.fc6.weight"] = np.repeat(code, 1024, axis=0)
  _, variables = interop.load_torchvision_detector(state_dict, ARCH)
  kernel = np.asarray(variables["params"]["box_heads_0"]["fc1"]["kernel"])   # (7 * 7 * C, 1024)
  rows = kernel[:, 0].reshape(size, size, channels)
  assert rows[2, 5, 17] == 17 * 100 + 2 * 10 + 5
  np.testing.assert_array_equal(rows, np.transpose(code.reshape(channels, size, size), (1, 2, 0)))


def one_line_error(function, *args, **kwargs) -> str:
  with pytest.raises(ValueError) as error:
    function(*args, **kwargs)
  message = str(error.value)
  assert "\n" not in message
  return message


def test_missing_unknown_and_misshapen_tensors_are_refused_by_name():
  state_dict, _ = random_torchvision_state_dict()
  missing = {k: v for k, v in state_dict.items() if k != "rpn.head.bbox_pred.weight"}
  assert "1 missing key(s): rpn.head.bbox_pred.weight" in one_line_error(
      interop.load_torchvision_detector, missing, ARCH)
  unknown = dict(state_dict, **{"roi_heads.mask_head.0.0.weight": np.zeros((256, 256, 3, 3))})
  assert "1 unexpected key(s): roi_heads.mask_head.0.0.weight" in one_line_error(
      interop.load_torchvision_detector, unknown, ARCH)
  misshapen = dict(state_dict, **{"backbone.fpn.layer_blocks.1.0.weight": np.zeros((256, 3, 3))})
  assert ("backbone.fpn.layer_blocks.1.0.weight has shape (256, 3, 3), the model needs "
          "(256, 256, 3, 3)") in one_line_error(interop.load_torchvision_detector, misshapen,
                                                ARCH)
  fc6 = dict(state_dict, **{"roi_heads.box_head.fc6.weight": np.zeros((1024, 100))})
  assert "roi_heads.box_head.fc6.weight has shape (1024, 100)" in one_line_error(
      interop.load_torchvision_detector, fc6, ARCH)
  twice = dict(state_dict, **{"rpn.head.conv.weight": state_dict["rpn.head.conv.0.0.weight"]})
  assert "rpn.head.conv.0.0.weight is given twice" in one_line_error(
      interop.load_torchvision_detector, twice, ARCH)
  assert "unknown torchvision detector 'retinanet_resnet50_fpn'" in one_line_error(
      interop.load_torchvision_detector, state_dict, "retinanet_resnet50_fpn")


def test_fine_tuned_class_count_comes_from_the_predictor():
  state_dict, _ = random_torchvision_state_dict()
  rng = np.random.default_rng(1)
  state_dict = dict(state_dict, **{
      "roi_heads.box_predictor.cls_score.weight": rng.standard_normal((3, 1024), np.float32),
      "roi_heads.box_predictor.cls_score.bias": np.zeros(3, np.float32),
      "roi_heads.box_predictor.bbox_pred.weight": rng.standard_normal((12, 1024), np.float32),
      "roi_heads.box_predictor.bbox_pred.bias": np.zeros(12, np.float32)})
  model, variables = interop.load_torchvision_detector(state_dict, ARCH)
  assert model.settings.num_classes == 2
  assert variables["params"]["box_heads_0"]["reg"]["kernel"].shape == (1024, 12)


def test_coordinate_trick_rounds_as_torchvision_does():
  """Two boxes of class 90 with IoU 0.50002 > 0.5 (the exact per-class NMS suppresses one); shifted
  by 90 x 417 (the coordinate trick, largest coordinate 416) they round to IoU 0.49993."""
  b = np.array([[100, 100, 120, 120], [106.6663, 100, 126.6663, 120], [0, 0, 416, 300]],
               np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  groups = np.array([90, 90, 3])
  valid = np.ones(3, bool)
  exact = boxes_lib.batched_nms(b, scores, groups, valid, 0.5, 3)
  trick = boxes_lib.batched_nms(b, scores, groups, valid, 0.5, 3, group_nms="coordinate_trick")
  shifted = b + (groups * np.float32(417))[:, None].astype(np.float32)
  assert numpy_greedy_nms(b, scores, valid, 0.5, 0.0, groups) == [0, 2]
  np.testing.assert_array_equal(np.asarray(exact[0])[np.asarray(exact[1])], [0, 2])
  assert numpy_greedy_nms(shifted, scores, valid, 0.5, 0.0) == [0, 1, 2]
  np.testing.assert_array_equal(np.asarray(trick[0])[np.asarray(trick[1])], [0, 1, 2])
  assert "unknown group_nms 'offset'" in one_line_error(
      boxes_lib.batched_nms, b, scores, groups, valid, 0.5, 3, group_nms="offset")


@pytest.fixture(scope="module")
def tiny_torchvision_detector():
  """A tiny detector in torchvision's convention (ResNet-18 at 1/8 width) with seeded NumPy
  variables (N(0, 0.1^2), BatchNorm statistics 0 and 1), which spares compiling `init`."""
  model = detector.create_detector(
      "resnet18", num_classes=3, width=0.125, fpn_channels=16, fc_hidden=32,
      convention=Convention.torchvision(), rpn_test=settings.ProposalSettings(100, 100, 100))
  rng = np.random.default_rng(0)

  def fill(path, spec):
    name = path[-1].key
    if name in ("mean", "var"):
      return np.full(spec.shape, float(name == "var"), np.float32)
    return (0.1 * rng.standard_normal(spec.shape)).astype(np.float32)

  return model, jax.tree_util.tree_map_with_path(fill, interop.abstract_variables(model))


def test_detect_output_format_and_one_compile_per_shape(tiny_torchvision_detector):
  model, variables = tiny_torchvision_detector
  rng = np.random.default_rng(0)
  before = inference._detections._cache_size()
  for shape in ((2, 64, 96), (2, 64, 96), (1, 96, 64)):
    images = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    results = detect(model, variables, images)
    assert len(results) == shape[0]
    for result in results:
      assert set(result) == {"boxes", "scores", "labels"}
      boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
      assert (boxes.dtype, scores.dtype, labels.dtype) == (np.float32, np.float32, np.int64)
      assert 0 < len(scores) <= 100 and boxes.shape == (len(scores), 4)
      assert np.all(np.diff(scores) <= 0) and np.all(scores > 0.05)
      assert labels.min() >= 1 and labels.max() <= 3     # torchvision: background 0, classes 1..3
      assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= shape[2])
      assert np.all(boxes[:, 3] <= shape[1])
  assert inference._detections._cache_size() - before == 2


def test_detect_refuses_bad_images_in_one_line(tiny_torchvision_detector):
  model, variables = tiny_torchvision_detector
  assert "uint8 RGB images (N, H, W, 3), got float32 (1, 64, 64, 3)" in one_line_error(
      detect, model, variables, np.zeros((1, 64, 64, 3), np.float32))
  assert "uint8 RGB images" in one_line_error(detect, model, variables,
                                              np.zeros((64, 64, 3), np.uint8))
  assert "multiples of 32, got 64x100" in one_line_error(detect, model, variables,
                                                        np.zeros((1, 64, 100, 3), np.uint8))


# ---------------------------------------------------------------------------------------------
# Against torchvision itself.

def textured_images(seed, count=2):
  """uint8 (count, HEIGHT, WIDTH, 3): coloured ellipses on noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:HEIGHT, :WIDTH]
  images = np.zeros((count, HEIGHT, WIDTH, 3))
  for image in images:
    for _ in range(12):
      cy, cx, ry, rx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH), *rng.uniform(10, 80, 2)
      image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(0, 255, 3)
  images += rng.normal(0, 20, images.shape)
  return np.clip(images, 0, 255).astype(np.uint8)


def separated_torchvision_detector(torch, seed, images, arch=ARCH):
  """torchvision's `arch` (fasterrcnn_resnet50_fpn; untrained, not resizing HEIGHT x WIDTH images)
  with random weights shaped so that no decision of the forward pass is a near tie.

  PyTorch and XLA round float32 differently (about 5e-7 of the features' scale here, 1e-5 with
  a plain random ResNet-50), and random heads make thousands of decisions (top-k, NMS), some of
  which would then be decided by that rounding. So:
  * BatchNorm statistics are those of the images, affine parameters random, epsilon 0 (as
    torchvision loads its COCO weights); each residual branch's last BatchNorm is scaled by
    0.02, which keeps every backbone tensor's effect on the features thousands of times above
    the tolerance and cuts the rounding differences (deep accumulations) about 15-fold.
  * RPN: the three anchors of a position share one objectness filter, with biases 0, -1, -2
    (exact gaps), and decode to the same square of half the anchor's side (box biases; 3%
    random jitter): a position's anchors overlap at IoU ~0.9 and the weaker two are always
    suppressed by a margin of 1 in logit, while neighbouring positions overlap at IoU ~0.6 < 0.7.
    Objectness spans +-8 (no sigmoid saturation).
  * Box head: class logits with std 1.5 (a few classes per RoI above 0.05, ~3,000 candidates
    for 100 detections), box deltas with std 0.5 (0.05 in box units).
  What is left continuous (the top-k cuts, per-class NMS among neighbours) is checked at this
  seed; every stage's outputs are compared too, so a failure names the stage.
  """
  from torchvision.models import detection

  torch.manual_seed(seed)
  model = getattr(detection, arch)(weights=None, weights_backbone=None, min_size=HEIGHT,
                                   max_size=WIDTH)
  body = model.backbone.body
  batchnorms = [(n, m) for n, m in body.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for _, module in batchnorms:
    module.momentum = None          # running statistics = those of one batch
    module.reset_running_stats()
  body.train()
  with torch.no_grad():
    image_list, _ = model.transform(list(torch_images(torch, images)))
    body(image_list.tensors)
    for name, module in batchnorms:
      module.eps = 0.0
      module.running_var.clamp_(min=1e-2)
      module.weight.uniform_(0.5, 1.5)
      module.bias.normal_(0, 0.2)
      if name.endswith("bn3"):
        module.weight.mul_(0.02)
        module.bias.mul_(0.02)
    model.eval()
    features = model.backbone(image_list.tensors)
    head = model.rpn.head
    hidden = [head.conv(f) for f in features.values()]
    head.cls_logits.weight[1:] = head.cls_logits.weight[0]
    head.cls_logits.bias[:] = 0.0
    head.cls_logits.weight.mul_(8.0 / max(float(head.cls_logits(h).abs().max()) for h in hidden))
    head.cls_logits.bias[:] = torch.tensor([0.0, -1.0, -2.0])
    head.bbox_pred.weight.mul_(0.03 / max(float(head.bbox_pred(h).std()) for h in hidden))
    cell = model.rpn.anchor_generator.cell_anchors[0]
    side = 0.5 * (cell[1, 2] - cell[1, 0])
    head.bbox_pred.bias[:] = torch.stack(
        [torch.zeros(3), torch.zeros(3), torch.log(side / (cell[:, 2] - cell[:, 0])),
         torch.log(side / (cell[:, 3] - cell[:, 1]))], 1).reshape(-1)
    proposals, _ = model.rpn(image_list, features)
    pooled = model.roi_heads.box_roi_pool(features, proposals, image_list.image_sizes)
    class_logits, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    predictor = model.roi_heads.box_predictor
    predictor.cls_score.weight.mul_(1.5 / float(class_logits.std()))
    predictor.bbox_pred.weight.mul_(0.5 / float(deltas.std()))
  return model


def torch_images(torch, images):
  """uint8 NHWC -> float NCHW in [0, 1], torchvision's input."""
  return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def handmade_rois():
  """RoIs whose sizes map to each of P2-P5 (sqrt(area) 8..600 px; torchvision's LevelMapper),
  some beyond the image, one thinner than a feature cell."""
  rois = np.array([[10, 12, 18, 22], [40.5, 30.25, 100, 70], [200, 100, 330, 250],
                   [0, 0, 415.5, 319], [-50, -40, 500, 420], [300, 200, 900, 700],
                   [120, 80, 120.4, 200], [60, 150, 260, 210]], np.float32)
  return np.stack([rois, rois[::-1] + 3.0])


def jax_stages(model, variables, images, rois):
  """Our features, RPN outputs, proposals and box head outputs on `rois`, under one jit."""
  image_shape = jnp.asarray([images.shape[1:3]] * images.shape[0], jnp.int32)

  def stages(module, images, rois):
    features = module.pyramid(images, image_shape, train=False)
    logits, deltas = module.rpn_head(features)
    anchors = module.rpn.anchors(images.shape[1:3], features)
    proposals, scores, valid = module.rpn.propose(logits, deltas, anchors, image_shape,
                                                  module.settings.rpn_test)
    return (features, logits, deltas, anchors, proposals, scores, valid,
            module.roi_heads.box_stage(0, features, rois))

  return jax.device_get(jax.jit(nn.apply(stages, model))(variables, images, rois))


def assert_close_to_scale(ours, theirs, relative, what):
  """max |ours - theirs| <= relative * max |theirs| (float32 rounding scales with magnitude)."""
  difference = float(np.max(np.abs(ours - theirs)))
  scale = float(np.max(np.abs(theirs)))
  assert difference <= relative * scale, (what, difference, scale)
  return difference / scale


def one_to_one(ours_boxes, theirs_boxes, atol, same=None):
  """The index into ours of each of theirs: boxes within `atol` (and `same`, (theirs, ours)
  bool) must pair up one to one."""
  close = np.abs(ours_boxes[None] - theirs_boxes[:, None]).max(-1) <= atol
  if same is not None:
    close &= same
  assert np.all(close.sum(0) == 1) and np.all(close.sum(1) == 1), (
      f"unmatched: theirs {np.flatnonzero(close.sum(1) != 1)}, ours "
      f"{np.flatnonzero(close.sum(0) != 1)}")
  return np.argmax(close, axis=1)


def assert_same_boxes(ours_boxes, ours_scores, theirs_boxes, atol, score_atol):
  """The same boxes in the same order, except that entries whose scores are within `score_atol`
  may come in either order (each side sorts by its own rounding). Returns the max difference."""
  assert len(ours_boxes) == len(theirs_boxes)
  order = one_to_one(ours_boxes, theirs_boxes, atol)
  assert np.all(np.diff(ours_scores) <= 0)
  assert np.all(np.diff(ours_scores[order]) <= score_atol)   # theirs decrease too
  return float(np.max(np.abs(ours_boxes[order] - theirs_boxes)))


def assert_same_detections(ours, theirs, box_atol, score_atol):
  """Same detections as torchvision's: labels equal, boxes and scores within the tolerances, in
  decreasing score. Returns the max box and score differences."""
  boxes, scores, labels = (theirs[k].numpy() for k in ("boxes", "scores", "labels"))
  box_difference = assert_same_boxes(ours["boxes"], ours["scores"], boxes, box_atol, score_atol)
  order = one_to_one(ours["boxes"], boxes, box_atol, ours["labels"][None] == labels[:, None])
  np.testing.assert_allclose(ours["scores"][order], scores, rtol=0, atol=score_atol)
  return box_difference, float(np.max(np.abs(ours["scores"][order] - scores)))


@pytest.fixture(scope="module")
def torchvision_pair():
  torch, _ = torchvision_modules()
  images = textured_images(seed=1)
  reference = separated_torchvision_detector(torch, 0, images)
  model, variables = interop.load_torchvision_detector(reference.state_dict(), ARCH)
  return torch, reference, model, variables, images


def test_detections_equal_torchvisions(torchvision_pair):
  torch, reference, model, variables, images = torchvision_pair
  rois = handmade_rois()
  levels = roi_align.map_roi_levels(rois, model.settings.roi_strides, "torchvision")
  assert set(np.asarray(levels).ravel()) == {0, 1, 2, 3}
  with torch.no_grad():
    image_list, _ = reference.transform(list(torch_images(torch, images)))
    assert tuple(image_list.tensors.shape[-2:]) == (HEIGHT, WIDTH)   # not resized, not padded
    features = reference.backbone(image_list.tensors)
    objectness, rpn_deltas = reference.rpn.head(list(features.values()))
    tv_anchors = reference.rpn.anchor_generator(image_list, list(features.values()))[0]
    proposals, _ = reference.rpn(image_list, features)
    pooled = reference.roi_heads.box_roi_pool(features, [torch.from_numpy(r) for r in rois],
                                              image_list.image_sizes)
    class_logits, box_deltas = reference.roi_heads.box_predictor(
        reference.roi_heads.box_head(pooled))
    expected = reference(list(torch_images(torch, images)))
  ours = jax_stages(model, variables, images, rois)
  differences = {}

  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  for level, theirs in enumerate(features.values()):
    differences[f"P{level + 2}"] = assert_close_to_scale(ours[0][level], nhwc(theirs), 2e-5,
                                                         f"FPN level P{level + 2}")
  for level, (logits, deltas) in enumerate(zip(objectness, rpn_deltas)):
    differences[f"objectness{level}"] = assert_close_to_scale(
        ours[1][level], nhwc(logits).reshape(2, -1), 2e-5, f"RPN objectness, level {level}")
    differences[f"rpn_deltas{level}"] = assert_close_to_scale(
        ours[2][level], nhwc(deltas).reshape(2, -1, 4), 2e-5, f"RPN deltas, level {level}")
  np.testing.assert_array_equal(np.concatenate(ours[3]), tv_anchors.numpy())
  for i, theirs in enumerate(proposals):
    valid = ours[6][i]
    assert valid.sum() == len(theirs), f"image {i}: proposal count"
    differences[f"proposals{i}"] = assert_same_boxes(ours[4][i][valid], ours[5][i][valid],
                                                     theirs.numpy(), 1e-3, 1e-5)
  logits, deltas = ours[7]
  differences["roi_class_logits"] = assert_close_to_scale(
      logits.reshape(-1, 91), class_logits.numpy(), 2e-5, "box head class logits")
  differences["roi_box_deltas"] = assert_close_to_scale(
      deltas.reshape(-1, 364), box_deltas.numpy(), 2e-5, "box head deltas")

  detections = detect(model, variables, images)
  for i, (mine, theirs) in enumerate(zip(detections, expected)):
    assert len(theirs["scores"]) == 100
    differences[f"detections{i}"] = assert_same_detections(mine, theirs, box_atol=1e-3,
                                                           score_atol=1e-5)
  print("max differences:", differences)


def test_state_dict_loads_back_into_torchvision(torchvision_pair):
  torch, reference, _, variables, _ = torchvision_pair
  state_dict = interop.to_torchvision_detector_state_dict(variables)
  original = {k: v for k, v in reference.state_dict().items()
              if not k.endswith("num_batches_tracked")}
  assert state_dict.keys() == original.keys()
  for name, value in original.items():
    np.testing.assert_array_equal(state_dict[name], value.numpy(), err_msg=name)
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})


def test_coordinate_trick_matches_torchvisions():
  """torchvision's batched_nms takes the coordinate trick on the CPU for up to 1,000 boxes."""
  torch, torchvision = torchvision_modules()
  b = np.array([[100, 100, 120, 120], [106.6663, 100, 126.6663, 120], [0, 0, 416, 300]],
               np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  groups = np.array([90, 90, 3])
  expected = torchvision.ops.batched_nms(*(torch.from_numpy(a) for a in (b, scores, groups)),
                                         0.5).numpy()
  trick = boxes_lib.batched_nms(b, scores, groups, np.ones(3, bool), 0.5, 3,
                                group_nms="coordinate_trick")
  np.testing.assert_array_equal(np.asarray(trick[0])[np.asarray(trick[1])], expected)
  np.testing.assert_array_equal(expected, [0, 1, 2])


# ---------------------------------------------------------------------------------------------
# Mask R-CNN.

MASK_ARCH = "maskrcnn_resnet50_fpn"
# What torchvision 0.29's maskrcnn_resnet50_fpn(num_classes=91) adds to the Faster R-CNN's 295.
TORCHVISION_MASK_SHAPES = {
    "roi_heads.mask_head.0.0.weight": (256, 256, 3, 3),
    "roi_heads.mask_head.3.0.bias": (256,),
    "roi_heads.mask_predictor.conv5_mask.weight": (256, 256, 2, 2),
    "roi_heads.mask_predictor.conv5_mask.bias": (256,),
    "roi_heads.mask_predictor.mask_fcn_logits.weight": (91, 256, 1, 1),
}


def test_mask_rcnn_state_dict_names_round_trip_and_older_names():
  state_dict, variables = random_torchvision_state_dict(0, MASK_ARCH)
  assert len(state_dict) == 295 + 12
  for name, shape in TORCHVISION_MASK_SHAPES.items():
    assert state_dict[name].shape == shape, name
  older = {re.sub(r"^roi_heads\.mask_head\.(\d)\.0\.",
                  lambda m: f"roi_heads.mask_head.mask_fcn{int(m.group(1)) + 1}.", k): v
           for k, v in state_dict.items()}   # torchvision < 0.13 (MaskRCNNHeads version 1)
  assert "roi_heads.mask_head.mask_fcn4.weight" in older
  for given in (state_dict, older):
    model, loaded = interop.load_torchvision_detector(given, MASK_ARCH)
    assert model.settings.with_masks and model.settings.mask_hidden == 256
    flat, flat_loaded = (traverse_util.flatten_dict(v) for v in (variables, loaded))
    assert flat.keys() == flat_loaded.keys()
    for path, value in flat.items():
      np.testing.assert_array_equal(np.asarray(flat_loaded[path]), value, err_msg=str(path))
  again = interop.to_torchvision_detector_state_dict(loaded)
  assert again.keys() == state_dict.keys()
  # The transposed convolution keeps torch's (in, out, 2, 2) weight: out[2i + a, 2j + b] reads
  # weight[:, :, a, b].
  kernel = np.asarray(loaded["params"]["mask_heads_0"]["deconv"]["kernel"])
  weight = state_dict["roi_heads.mask_predictor.conv5_mask.weight"]
  np.testing.assert_array_equal(kernel[1, 0], weight[:, :, 1, 0].T)
  without_masks = {k: v for k, v in state_dict.items() if ".mask_" not in k}
  assert "12 missing key(s): roi_heads.mask_head.0.0.bias" in one_line_error(
      interop.load_torchvision_detector, without_masks, MASK_ARCH)


def separate_mask_logits(torch, model, images):
  """Scales torchvision's (random) mask logits to std 2 on its own detections, so that the
  probabilities are neither saturated nor flat."""
  with torch.no_grad():
    image_list, _ = model.transform(list(torch_images(torch, images)))
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    heads = model.roi_heads
    pooled = heads.mask_roi_pool(features, [d["boxes"] for d in detections],
                                 image_list.image_sizes)
    logits = heads.mask_predictor(heads.mask_head(pooled))
    heads.mask_predictor.mask_fcn_logits.weight.mul_(2.0 / float(logits.std()))


def test_mask_rcnn_detections_and_masks_equal_torchvisions():
  torch, _ = torchvision_modules()
  images = textured_images(seed=1)
  reference = separated_torchvision_detector(torch, 0, images, MASK_ARCH)
  separate_mask_logits(torch, reference, images)
  model, variables = interop.load_torchvision_detector(reference.state_dict(), MASK_ARCH)
  with torch.no_grad():
    expected = reference(list(torch_images(torch, images)))
  differences = {}
  for i, (mine, theirs) in enumerate(zip(detect(model, variables, images), expected)):
    assert set(mine) == {"boxes", "scores", "labels", "masks"} and len(theirs["scores"]) == 100
    assert mine["masks"].dtype == np.float32
    assert mine["masks"].shape == (len(mine["scores"]), 1, HEIGHT, WIDTH)
    differences[f"detections{i}"] = assert_same_detections(mine, theirs, box_atol=1e-3,
                                                           score_atol=1e-5)
    order = one_to_one(mine["boxes"], theirs["boxes"].numpy(), 1e-3,
                       mine["labels"][None] == theirs["labels"].numpy()[:, None])
    masks, theirs_masks = mine["masks"][order], theirs["masks"].numpy()
    boxes = theirs["boxes"].numpy()
    inside = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1).sum()
    assert 0.1 < np.sum(theirs_masks > 0.5) / inside < 0.9    # neither empty nor full boxes
    differences[f"masks{i}"] = float(np.max(np.abs(masks - theirs_masks)))
    np.testing.assert_allclose(masks, theirs_masks, rtol=0, atol=1e-4)
  print("max differences:", differences)
