"""Table 7: Cascade Mask R-CNN, ResNet-101 FPN backbone, baseline; COCO val2017
mask and box AP.

Paper, mask AP (Table 7): AP 37.0, AP50 58.0, AP75 39.9, APs 19.1, APm 40.5, APl 51.4.
Paper, box AP (Table 6): AP 42.6, AP50 60.7, AP75 46.7, APs 23.8, APm 46.4, APl 56.9.
Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/cascade_mask_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("cascade_mask_rcnn", "none")
