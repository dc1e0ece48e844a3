"""Object detection and instance segmentation (the paper's Tables 6 and 7) in JAX.

Data: `data_config`, `transforms`, `sampler`, `data` (COCO-layout records -> canvas batches) and
`coco_eval` (results JSON, COCOeval). Ops: `convention` (where mmdetection v1.0, the paper's
framework, and torchvision differ), `boxes` (IoU, box coder, NMS), `anchors`, `roi_align`,
`targets` (assigner, sampler, RPN and R-CNN targets), `losses` and `postprocess` (RPN proposals,
per-class NMS): pure, jit-able functions with static shapes. Model: `fpn`, `rpn`, `roi_heads`,
`detector` (Faster and Cascade R-CNN).
"""
