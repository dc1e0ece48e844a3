"""Table 6: Faster R-CNN, ResNet-101 FPN backbone, +SE; COCO val2017 box AP.

Paper: AP 39.8, AP50 61.9, AP75 43.1, APs 23.9, APm 43.8, APl 51.5; ΔParams +4.78M, ΔFLOPs +0.191G
against the plain backbone. Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/se_faster_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("faster_rcnn", "se")
