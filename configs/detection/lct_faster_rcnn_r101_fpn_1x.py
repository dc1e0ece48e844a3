"""Table 6: Faster R-CNN, ResNet-101 FPN backbone, +LCT (G=64, w=0, b=1); COCO val2017 box AP.

Paper: AP 40.0, AP50 62.8, AP75 43.4, APs 24.8, APm 44.4, APl 50.9; ΔParams +0.06M, ΔFLOPs +0.187G
against the plain backbone. Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/lct_faster_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("faster_rcnn", "lct", groups=64, w_init=0.0, b_init=1.0, use_norm=True,
                         use_transform=True)
