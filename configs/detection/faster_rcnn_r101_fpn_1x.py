"""Table 6: Faster R-CNN, ResNet-101 FPN backbone, baseline; COCO val2017 box AP.

Paper: AP 38.5, AP50 60.5, AP75 41.8, APs 22.3, APm 43.2, APl 49.8.
Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/faster_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("faster_rcnn", "none")
