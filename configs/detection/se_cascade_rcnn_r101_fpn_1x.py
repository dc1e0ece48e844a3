"""Table 6: Cascade R-CNN, ResNet-101 FPN backbone, +SE; COCO val2017 box AP.

Paper: AP 43.4, AP50 62.2, AP75 47.4, APs 24.7, APm 47.4, APl 57.0; ΔParams +4.78M, ΔFLOPs +0.191G
against the plain backbone. Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/se_cascade_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("cascade_rcnn", "se")
