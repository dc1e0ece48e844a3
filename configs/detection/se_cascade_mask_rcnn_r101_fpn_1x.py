"""Table 7: Cascade Mask R-CNN, ResNet-101 FPN backbone, +SE (r=16); COCO val2017
mask and box AP.

Paper, mask AP (Table 7): AP 37.7, AP50 59.0, AP75 40.5, APs 19.4, APm 41.1, APl 52.4.
Paper, box AP (Table 6): AP 43.7, AP50 61.8, AP75 47.5, APs 24.3, APm 47.5, APl 58.6.
ΔParams +4.78M, ΔFLOPs +0.191G against the plain backbone.
Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/se_cascade_mask_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("cascade_mask_rcnn", "se")
