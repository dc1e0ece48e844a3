"""Table 6: Cascade R-CNN, ResNet-101 FPN backbone, baseline; COCO val2017 box AP.

Paper: AP 42.0, AP50 60.3, AP75 45.9, APs 23.2, APm 46.0, APl 56.3.
Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/cascade_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("cascade_rcnn", "none")
