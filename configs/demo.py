"""Demo: LCT-ResNet-18 (width 1/4, small stem) on the embedded scikit-learn digits, CPU-friendly.

Command (the README's main command; about 2 minutes on a 2-core CPU, 99.44% test accuracy on an
Intel Xeon, 99.17% on an AMD EPYC: float rounding differs between CPUs):
  python train.py --config=configs/demo.py --workdir=workdir/demo
The same run with SE (reduction 4) or without attention, for the paper's comparison:
  python train.py --config=configs/demo.py:se --workdir=workdir/demo_se
  python train.py --config=configs/demo.py:none --workdir=workdir/demo_none

1,437 training and 360 test images (8x8 digits upscaled to 16x16), 10 classes; no download.
Same recipe shape as the paper (SGD momentum 0.9, coupled weight decay, step schedule), scaled to
the tiny dataset; no horizontal flip (digits are not mirror-symmetric).
"""

from configs import base


# The width-1/4 ResNet-18's first stage has 16 channels: 4 groups for LCT and SE+, SE's bottleneck
# 4 times narrower (the paper's G=64 exceeds the channels; its reduction 16 leaves one unit).
DEMO_BLOCKS = {**base.PAPER_BLOCKS,
               "lct": {**base.PAPER_BLOCKS["lct"], "groups": 4},
               "se": {"reduction": 4},
               "se_norm": {"reduction": 4, "groups": 4}}


def get_config(arg=None):
  config = base.imagenet_config("resnet18", "lct", arg, blocks=DEMO_BLOCKS)
  config.model.width = 0.25
  config.model.small_stem = True
  config.dataset.name = "sklearn_digits"
  config.dataset.eval_split = "test"
  config.dataset.image_size = 16
  config.dataset.resize_size = 16
  config.dataset.crop_area_range = (0.5, 1.0)
  config.dataset.random_flip = False
  config.dataset.shuffle_buffer = 2048
  config.dataset.cache = True
  config.batch_size = 64
  config.num_epochs = 30
  config.learning_rate = 0.1
  config.lr_decay_epochs = ()
  config.lr_decay_fractions = (2 / 3, 0.9)  # epochs 20 and 27 of 30, scaled by num_epochs
  config.weight_decay = 5e-4
  config.checkpoint_every_steps = 200
  config.log_every_steps = 22
  config.eval_every_epochs = 10
  return config
