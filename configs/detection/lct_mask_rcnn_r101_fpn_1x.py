"""Table 7: Mask R-CNN, ResNet-101 FPN backbone, +LCT (G=64, w=0, b=1); COCO val2017
mask and box AP.

Paper, mask AP (Table 7): AP 37.0, AP50 59.6, AP75 39.3, APs 20.5, APm 40.8, APl 50.5.
Paper, box AP (Table 6): AP 40.9, AP50 63.1, AP75 44.6, APs 25.0, APm 45.1, APl 52.9.
ΔParams +0.06M, ΔFLOPs +0.187G against the plain backbone.
Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/lct_mask_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("mask_rcnn", "lct", groups=64, w_init=0.0, b_init=1.0,
                         use_norm=True, use_transform=True)
