"""Table 7: Mask R-CNN, ResNet-101 FPN backbone, +SE (r=16); COCO val2017
mask and box AP.

Paper, mask AP (Table 7): AP 36.9, AP50 59.4, AP75 39.2, APs 20.0, APm 40.8, APl 50.3.
Paper, box AP (Table 6): AP 40.7, AP50 62.7, AP75 44.3, APs 24.5, APm 44.8, APl 52.7.
ΔParams +4.78M, ΔFLOPs +0.191G against the plain backbone.
Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/se_mask_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("mask_rcnn", "se")
