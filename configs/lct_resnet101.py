"""Table 1: LCT-ResNet-101 on ImageNet (batch 220).

Paper: 44.61M params, 7.858 GFLOPs, top-1 78.55 / top-5 94.26.

Command (8 GPUs or a TPU slice; the paper used 4 GPUs):
  python train.py --config=configs/lct_resnet101.py --workdir=$WORKDIR

"""

from configs import base


def get_config(arg=None):
  return base.imagenet_config("resnet101", "lct", arg)
