"""Table 7: Cascade Mask R-CNN, ResNet-101 FPN backbone, +LCT (G=64, w=0, b=1); COCO val2017
mask and box AP.

Paper, mask AP (Table 7): AP 38.1, AP50 59.5, AP75 41.3, APs 19.9, APm 41.3, APl 53.2.
Paper, box AP (Table 6): AP 44.1, AP50 62.4, AP75 48.3, APs 25.0, APm 47.7, APl 59.3.
ΔParams +0.06M, ΔFLOPs +0.187G against the plain backbone.
Command (data and ImageNet export as in configs/detection/base.py):
  python train.py --config=configs/detection/lct_cascade_mask_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT
"""

from configs.detection import base


def get_config():
  return base.get_config("cascade_mask_rcnn", "lct", groups=64, w_init=0.0, b_init=1.0,
                         use_norm=True, use_transform=True)
