"""Table 6: Faster R-CNN, ResNet-101 FPN backbone, +SE; COCO val2017 box AP.

Paper: AP 39.8, AP50 61.9, AP75 43.1, APs 23.9, APm 43.8, APl 51.5; ΔParams +4.78M, ΔFLOPs +0.191G
against the plain backbone (`python -m lct_flax.flops`).

Commands (COCO 2017 in $COCO as downloaded: annotations/, train2017/, val2017/; an ImageNet export
of the same backbone, e.g. from `python train.py --config=configs/se_resnet101.py` then
`python -m lct_flax.export`):
  python -m lct_flax.detection.data --dataset=coco_instances/2017 --manual_dir=$COCO \
      --data_dir=$DATA
  python train.py --config=configs/detection/se_faster_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT

The recipe is configs/detection/base.py (the paper's: 4 images per step, 12 epochs, lr 0.005).
"""

from configs.detection import base


def get_config():
  return base.get_config("faster_rcnn", "se")
