"""Table 1: SE-ResNet-101 on ImageNet (batch 220).

Paper: 49.33M params, 7.863 GFLOPs, top-1 78.49 / top-5 94.19.

Command (8 GPUs or a TPU slice; the paper used 4 GPUs):
  python train.py --config=configs/se_resnet101.py --workdir=$WORKDIR

"""

from configs import base


def get_config(arg=None):
  return base.imagenet_config("resnet101", "se", arg)
