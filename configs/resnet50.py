"""Table 1: ResNet-50 baseline on ImageNet.

Paper: 25.56M params, 4.122 GFLOPs, top-1 76.15 / top-5 92.87.

Command (8 GPUs or a TPU slice; the paper used 4 GPUs):
  python train.py --config=configs/resnet50.py --workdir=$WORKDIR

"""

from configs import base


def get_config(arg=None):
  return base.imagenet_config("resnet50", "none", arg)
