"""Table 1: ResNet-101 baseline on ImageNet (batch 220).

Paper: 44.55M params, 7.849 GFLOPs, top-1 77.37 / top-5 93.56.

Command (8 GPUs or a TPU slice; the paper used 4 GPUs):
  python train.py --config=configs/resnet101.py --workdir=$WORKDIR

"""

from configs import base


def get_config(arg=None):
  return base.imagenet_config("resnet101", "none", arg)
