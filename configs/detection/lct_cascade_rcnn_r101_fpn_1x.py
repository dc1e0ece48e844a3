"""Table 6: Cascade R-CNN, ResNet-101 FPN backbone, +LCT (G=64, w=0, b=1); COCO val2017 box AP.

Paper: AP 43.6, AP50 62.4, AP75 47.6, APs 25.4, APm 47.6, APl 57.3; ΔParams +0.06M, ΔFLOPs +0.187G
against the plain backbone. Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/lct_cascade_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("cascade_rcnn", "lct", groups=64, w_init=0.0, b_init=1.0,
                         use_norm=True, use_transform=True)
