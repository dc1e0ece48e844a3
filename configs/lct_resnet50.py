"""Table 1: LCT-ResNet-50 (G=64, w=0, b=1) on ImageNet.

Paper: 25.59M params, 4.127 GFLOPs, top-1 77.45 / top-5 93.71.

Command (8 GPUs or a TPU slice; the paper used 4 GPUs):
  python train.py --config=configs/lct_resnet50.py --workdir=$WORKDIR

Ablations (LCT-ResNet-50, paper top-1/top-5) through the config argument:
  Table 2, groups:  --config=configs/lct_resnet50.py:groups=G   G=1 77.37/93.66, 4 77.36/93.57,
                    8 77.44/93.56, 16 77.34/93.54, 32 77.32/93.52, 64 77.45/93.71,
                    128 did not converge
  Table 3:          :use_norm=False 76.89/93.33 (w/o normalisation);
                    :use_transform=False 76.82/93.32 (w/o transform)
  Table 5, init:    :w_init=0,b_init=0 77.36/93.60; :w_init=1,b_init=0 77.24/93.54
                    (default w=0, b=1: 77.45/93.71)
  Table 4, SE+:     configs/se_norm_resnet50.py
"""

from configs import base


def get_config(arg=None):
  return base.imagenet_config("resnet50", "lct", arg)
