"""Table 7: Cascade Mask R-CNN, ResNet-101 FPN backbone, baseline; COCO val2017 mask and box AP.

Paper, mask AP (Table 7): AP 37.0, AP50 58.0, AP75 39.9, APs 19.1, APm 40.5, APl 51.4.
Paper, box AP (Table 6): AP 42.6, AP50 60.7, AP75 46.7, APs 23.8, APm 46.4, APl 56.9.
ΔParams -, ΔFLOPs - against the plain backbone (`python -m lct_flax.flops`).

Commands (COCO 2017 in $COCO as downloaded: annotations/, train2017/, val2017/; an ImageNet export
of the same backbone, e.g. from `python train.py --config=configs/resnet101.py` then
`python -m lct_flax.export`):
  python -m lct_flax.detection.data --dataset=coco_instances/2017 --manual_dir=$COCO \
      --data_dir=$DATA
  python train.py --config=configs/detection/cascade_mask_rcnn_r101_fpn_1x.py --workdir=$RUN \
      --config.dataset.data_dir=$DATA --config.init_from=$IMAGENET_EXPORT

The recipe is configs/detection/base.py (the paper's: 4 images per step, 12 epochs, lr 0.005) with
mmdetection v1's mask head (configs/cascade_mask_rcnn_r101_fpn_1x.py: RoIAlign 14x14, four 3x3
convolutions of 256, 28x28 masks, binarised at 0.5). Each evaluation prints box and mask AP.
"""

from configs.detection import base


def get_config():
  return base.get_config("cascade_mask_rcnn", "none")
