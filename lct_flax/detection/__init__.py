"""Object detection and instance segmentation (the paper's Tables 6 and 7) in JAX.

Data: `data_config`, `transforms`, `sampler`, `data` (COCO-layout records -> canvas batches) and
`coco_eval` (results JSON, COCOeval). Ops: `convention` (where mmdetection v1.0, the paper's
framework, and torchvision differ), `boxes` (IoU, box coder, NMS), `anchors`, `roi_align`,
`targets` (assigner, sampler, RPN and R-CNN targets), `losses` and `postprocess` (RPN proposals,
per-class NMS), `masks` (Mask R-CNN's targets from bit-packed instance masks): pure, jit-able
functions with static shapes; `segmentation` (host: COCO masks decoded onto the canvas, detection
masks pasted and RLE-encoded). Model: `fpn`, `rpn`, `roi_heads`, `detector` (Faster, Cascade,
Mask and Cascade Mask R-CNN). Training and evaluation on the shared loop: `training`, `task`,
`evaluation`, `exporting`. `interop` loads torchvision's Faster and Mask R-CNN state dicts (and
writes them); `detect(model, variables, images)` runs any of these detectors on uint8 images and
returns NumPy detections (and masks) in torchvision's output format.
"""

from lct_flax.detection.inference import detect  # noqa: F401
