"""Table 7: Mask R-CNN, ResNet-101 FPN backbone, baseline; COCO val2017
mask and box AP.

Paper, mask AP (Table 7): AP 35.9, AP50 57.7, AP75 38.4, APs 19.2, APm 39.7, APl 49.7.
Paper, box AP (Table 6): AP 39.4, AP50 61.0, AP75 43.3, APs 23.1, APm 43.7, APl 51.3.
Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/mask_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("mask_rcnn", "none")
