"""Demo: a tiny LCT Mask R-CNN (ResNet-18 width 1/4, FPN 64, mask head of 16 channels) on the
generated COCO-layout shapes dataset (its polygons are the instance masks), from scratch on a CPU.

Command (the README's mask demo, which first generates and prepares the dataset):
  bash scripts/mask_demo.sh
or, with the dataset prepared in DATA from the layout in LAYOUT:
  python train.py --config=configs/detection/shapes_mask_demo.py --workdir=workdir/shapes_mask \
      --config.dataset.data_dir=DATA --config.dataset.manual_dir=LAYOUT

configs/detection/shapes_demo.py (the paper's recipe scaled to the tiny task) with Mask R-CNN's
mask head: 14x14 RoIs, four 3x3 convolutions of 16 channels, 28x28 masks from the (at most 32 per
image) positive RoIs, mmdetection v1's mask targets and paste. Result from a fresh clone (Intel
Xeon, 2 cores, about 5 minutes of training): box AP 82.4, mask AP 80.6 (AP50 98.9, AP75 91.6) on
the 80 validation images.
"""

from configs.detection import shapes_demo


def get_config():
  config = shapes_demo.get_config("mask_rcnn")
  config.model.mask_hidden = 16
  return config
