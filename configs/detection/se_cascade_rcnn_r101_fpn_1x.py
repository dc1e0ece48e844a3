"""Table 6: Cascade R-CNN, ResNet-101 FPN backbone, +SE; COCO val2017 box AP.

Paper: AP 43.4, AP50 62.2, AP75 47.4, APs 24.7, APm 47.4, APl 57.0; ΔParams +4.78M, ΔFLOPs +0.191G
against the plain backbone (`python -m lct_flax.flops`).

Commands (COCO 2017 in $COCO as downloaded: annotations/, train2017/, val2017/; an ImageNet export
of the same backbone, e.g. from `python train.py --config=configs/se_resnet101.py` then
`python -m lct_flax.export`):
  python -m lct_flax.detection.data --dataset=coco_instances/2017 --manual_dir=$COCO \
      --data_dir=$DATA
  python train.py --config=configs/detection/se_cascade_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT

The recipe is configs/detection/base.py (the paper's: 4 images per step, 12 epochs, lr 0.005).
"""

from configs.detection import base


def get_config():
  return base.get_config("cascade_rcnn", "se")
