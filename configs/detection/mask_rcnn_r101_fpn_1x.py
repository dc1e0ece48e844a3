"""Table 7: Mask R-CNN, ResNet-101 FPN backbone, baseline; COCO val2017 mask and box AP.

Paper, mask AP (Table 7): AP 35.9, AP50 57.7, AP75 38.4, APs 19.2, APm 39.7, APl 49.7.
Paper, box AP (Table 6): AP 39.4, AP50 61.0, AP75 43.3, APs 23.1, APm 43.7, APl 51.3.
ΔParams -, ΔFLOPs - against the plain backbone (`python -m lct_flax.flops`).

Commands (COCO 2017 in $COCO as downloaded: annotations/, train2017/, val2017/; an ImageNet export
of the same backbone, e.g. from `python train.py --config=configs/resnet101.py` then
`python -m lct_flax.export`):
  python -m lct_flax.detection.data --dataset=coco_instances/2017 --manual_dir=$COCO \
      --data_dir=$DATA
  python train.py --config=configs/detection/mask_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT

The recipe is configs/detection/base.py (the paper's: 4 images per step, 12 epochs, lr 0.005) with
mmdetection v1's mask head (configs/mask_rcnn_r101_fpn_1x.py: RoIAlign 14x14, four 3x3
convolutions of 256, 28x28 masks, binarised at 0.5). Each evaluation prints box and mask AP.
"""

from configs.detection import base


def get_config():
  return base.get_config("mask_rcnn", "none")
