"""Table 6: Faster R-CNN, ResNet-101 FPN backbone, baseline; COCO val2017 box AP.

Paper: AP 38.5, AP50 60.5, AP75 41.8, APs 22.3, APm 43.2, APl 49.8; ΔParams -, ΔFLOPs -
against the plain backbone (`python -m lct_flax.flops`).

Commands (COCO 2017 in $COCO as downloaded: annotations/, train2017/, val2017/; an ImageNet export
of the same backbone, e.g. from `python train.py --config=configs/resnet101.py` then
`python -m lct_flax.export`):
  python -m lct_flax.detection.data --dataset=coco_instances/2017 --manual_dir=$COCO \
      --data_dir=$DATA
  python train.py --config=configs/detection/faster_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT

The recipe is configs/detection/base.py (the paper's: 4 images per step, 12 epochs, lr 0.005).
"""

from configs.detection import base


def get_config():
  return base.get_config("faster_rcnn", "none")
