"""Detection ops for Faster/Cascade/Mask R-CNN in JAX (issues 13-14).

`convention` holds where mmdetection v1.0 (the paper's framework) and torchvision differ;
`boxes` (IoU, box coder, NMS), `anchors`, `roi_align`, `targets` (assigner, sampler, RPN and
R-CNN targets), `losses` and `postprocess` (RPN proposals, per-class NMS) are pure, jit-able
functions with static shapes, on which the models are built.
"""
