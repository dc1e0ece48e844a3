"""Table 1: SE-ResNet-50 (reduction 16) on ImageNet.

Paper: 28.09M params, 4.130 GFLOPs, top-1 77.31 / top-5 93.68.

Command (8 GPUs or a TPU slice; the paper used 4 GPUs):
  python train.py --config=configs/se_resnet50.py --workdir=$WORKDIR

"""

from configs import base


def get_config(arg=None):
  return base.imagenet_config("resnet50", "se", arg)
