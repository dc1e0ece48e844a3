"""Table 4: SE+ (group normalisation, G=64, before SE's FC layers) in ResNet-50.

Paper: top-1 77.37 / top-5 93.73.

Command (8 GPUs or a TPU slice; the paper used 4 GPUs):
  python train.py --config=configs/se_norm_resnet50.py --workdir=$WORKDIR

"""

from configs import base


def get_config(arg=None):
  return base.imagenet_config("resnet50", "se_norm", arg)
