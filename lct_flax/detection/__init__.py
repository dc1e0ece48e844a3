"""Detection ops for Faster/Cascade/Mask R-CNN in JAX (issues 13-14).

`convention` holds where mmdetection v1.0 (the paper's framework) and torchvision differ;
`boxes` (IoU, box coder, NMS), `anchors`, `roi_align`, `targets` (assigner, sampler, RPN and
R-CNN targets), `losses` and `postprocess` (RPN proposals, per-class NMS) are pure, jit-able
functions with static shapes, on which the models are built: `fpn`, `rpn`, `roi_heads` and
`detector` (Faster and Cascade R-CNN). `interop` loads torchvision's Faster R-CNN state dicts
(and writes them); `detect(model, variables, images)` runs any of these detectors on uint8
images and returns NumPy detections in torchvision's output format.
"""

from lct_flax.detection.inference import detect  # noqa: F401
