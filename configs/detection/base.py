"""The paper's detection recipe, shared by the Table 6 and 7 configs (paper p. 7, "Implementation
details"; mmdetection v1.0's configs/faster_rcnn_r101_fpn_1x.py, cascade_rcnn_r101_fpn_1x.py,
mask_rcnn_r101_fpn_1x.py and cascade_mask_rcnn_r101_fpn_1x.py for everything the paper leaves to
"the default settings of the mmdetection framework").

ResNet-101 FPN backbone initialised from an ImageNet export of the same backbone (`init_from`,
its classifier skipped), stem and layer1 frozen (the paper's "c1 and c2"), BatchNorm statistics
frozen (mmdetection's norm_eval; its scale and bias still train, as mmdetection's default
norm_cfg requires_grad=True does; `--config.frozen_bn=True` freezes them too). COCO train2017,
images resized to fit 1333x800, flipped with probability 0.5, padded to a landscape (800, 1344)
or portrait (1344, 800) canvas. 12 epochs of SGD (momentum 0.9, weight decay 1e-4) at lr 0.005 for
4 images per step (mmdetection's 0.02 for 16, linearly scaled, as the paper did on 4 GPUs x 1
image), linear warm-up over 500 steps from 1/3, x0.1 at the start of the 9th and 12th epochs,
gradients clipped at global norm 35. RPN: 256 anchors per image, half positive, smooth L1 beta
1/9; R-CNN: 512 RoIs, a quarter positive, smooth L1 beta 1; test: 1000 proposals, score >= 0.05,
per-class NMS 0.5, 100 detections per image. Mask R-CNN and Cascade Mask R-CNN add a mask head
per stage (RoIAlign 14x14, four 3x3 convolutions of 256, 28x28 per-class masks from the positive
RoIs, binarised at 0.5 when pasted). mmdetection v1's box and mask conventions throughout.

Data and backbone for the Table 6 and 7 configs (COCO 2017 in $COCO as downloaded: annotations/,
train2017/, val2017/; $IMAGENET_EXPORT an export of the ImageNet-trained backbone of the same kind,
e.g. `python train.py --config=configs/lct_resnet101.py` then `python -m lct_flax.export`):
  python -m lct_flax.detection.data --dataset=coco_instances/2017 --manual_dir=$COCO \
      --data_dir=$DATA
"""

import ml_collections

from configs import base
from lct_flax.detection import data_config


def get_config(detector: str = "faster_rcnn", attention: str = "none",
               **attention_kwargs) -> ml_collections.ConfigDict:
  config = base.run_config()
  config.task = "detection"
  config.model = ml_collections.ConfigDict({
      "name": "resnet101",
      "attention": attention,
      "attention_kwargs": ml_collections.ConfigDict(attention_kwargs),
      "width": 1.0,
      "detector": detector,  # "faster_rcnn" | "cascade_rcnn" | "mask_rcnn" | "cascade_mask_rcnn"
      "convention": "mmdet_v1",           # box arithmetic of the paper's framework
      "fpn_channels": 256,
      "box_head": "shared_2fc",           # SharedFCBBoxHead (lct_flax.detection.head_registry)
      "fc_hidden": 1024,
  })
  if detector in ("mask_rcnn", "cascade_mask_rcnn"):
    config.model.mask_head = "fcn"        # FCNMaskHead
    config.model.mask_hidden = 256        # its conv_out_channels
  config.dataset = data_config.default_dataset_config("coco_instances/2017")

  config.update({
      "batch_size": 4,                    # global: the paper's 4 GPUs x 1 image
      "num_epochs": 12,
      "learning_rate": 0.005,
      "lr_decay_epochs": (8, 11),         # mmdetection's step=[8, 11]
      "warmup_steps": 500,
      "warmup_ratio": 1.0 / 3.0,
      "grad_clip_norm": 35.0,
      "init_skip": ("fc.*",),             # init_from: an ImageNet export of the same backbone
      "frozen_stages": 1,
      "norm_eval": True,
      "log_every_steps": 50,
  })
  return config
