"""Object detection and instance segmentation (the paper's Tables 6 and 7) in JAX.

Ops (pure, jit-able, static shapes): `convention` (where mmdetection v1.0, the paper's framework,
and torchvision differ), `boxes` (IoU, box coder, NMS), `anchors`, `roi_align`, `targets` (assigner,
sampler, RPN and R-CNN targets), `losses`, `postprocess` (RPN proposals, per-class NMS), `ranking`
(a row's top k, split by image under data parallelism), `mask_targets` (Mask R-CNN's targets from
bit-packed instance masks). Model, assembled from parts: `settings` (the numbers, with the paper's
defaults), `fpn`, `rpn` (RPN head, anchors, proposals, targets, loss), `heads` (box and mask heads)
named in `head_registry` (a new head: one module and one `register` call), `roi_heads` (the R-CNN
stages: Faster or Cascade, with or without masks), `detector` (`TwoStageDetector` composes them),
built from a `model_specs.DetectorSpec`. Data (TensorFlow, no Flax): `data_config`, `transforms`,
`sampler`, `data` (COCO-layout records -> canvas batches); `segmentation` (host: COCO masks onto the
canvas, detection masks pasted and RLE-encoded). Training and evaluation: `steps` (the loss and the
detect step of the detection task, `lct_flax.tasks.detection`), `evaluation` and `coco_eval`
(COCOeval). `interop` loads torchvision's Faster and Mask R-CNN state dicts (and writes them);
`detect(model, variables, images)` (`inference`) runs any of these detectors on uint8 images and
returns NumPy detections (and masks) in torchvision's output format.

Importing the package imports none of these: `detect` is loaded when first used.
"""


def __getattr__(name):
  if name == "detect":
    from lct_flax.detection.inference import detect
    return detect
  raise AttributeError(f"module 'lct_flax.detection' has no attribute {name!r}")
