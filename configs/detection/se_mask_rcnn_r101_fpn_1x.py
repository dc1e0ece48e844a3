"""Table 7: Mask R-CNN, ResNet-101 FPN backbone, +SE; COCO val2017 mask and box AP.

Paper, mask AP (Table 7): AP 36.9, AP50 59.4, AP75 39.2, APs 20.0, APm 40.8, APl 50.3.
Paper, box AP (Table 6): AP 40.7, AP50 62.7, AP75 44.3, APs 24.5, APm 44.8, APl 52.7.
ΔParams +4.78M, ΔFLOPs +0.191G against the plain backbone (`python -m lct_flax.flops`).

Commands (COCO 2017 in $COCO as downloaded: annotations/, train2017/, val2017/; an ImageNet export
of the same backbone, e.g. from `python train.py --config=configs/se_resnet101.py` then
`python -m lct_flax.export`):
  python -m lct_flax.detection.data --dataset=coco_instances/2017 --manual_dir=$COCO \
      --data_dir=$DATA
  python train.py --config=configs/detection/se_mask_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT

The recipe is configs/detection/base.py (the paper's: 4 images per step, 12 epochs, lr 0.005) with
mmdetection v1's mask head (configs/mask_rcnn_r101_fpn_1x.py: RoIAlign 14x14, four 3x3
convolutions of 256, 28x28 masks, binarised at 0.5). Each evaluation prints box and mask AP.
"""

from configs.detection import base


def get_config():
  return base.get_config("mask_rcnn", "se")
