"""Fine-tuning from pretrained weights: a new head on a pretrained backbone, lower learning rate,
cosine schedule. By default a linear probe of the demo's export on the embedded digits.

Command (after `bash scripts/demo.sh`, which writes workdir/demo/export; `bash scripts/finetune.sh`
runs both):
  python train.py --config=configs/finetune.py --workdir=workdir/finetune
gives 99.17% test accuracy on the digits in 5 epochs (about 30 s) with the backbone frozen (the
demo's own model: 99.44%; Intel Xeon, 2 cores; on an AMD EPYC 99.72% from its 99.17% model): the
classifier is initialised fresh and only it trains, on the demo's features. `:full` fine-tunes
every layer instead (BatchNorm included).

Any source and dataset: `--config.init_from=` an export directory, or a torchvision/timm-layout
`.safetensors`/`.npz` state dict (e.g. torchvision's ResNet-50 weights saved with
`safetensors.torch.save_file(model.state_dict(), "resnet50.safetensors")`), with the matching
`--config.model.*` and e.g. `--config.dataset.name=cifar10`. The source's classifier is skipped
(`init_skip`), so the head fits the dataset's classes; LCT's w/b are initialised at w=0, b=1 when
the source is a plain ResNet. Freezing follows mmdetection: `frozen_stages` -1 (none) .. 4 (the
whole backbone), `frozen_bn` (BatchNorm in inference mode, scale and bias frozen).
"""

from configs import demo


def get_config(arg=None):
  if arg not in (None, "", "probe", "full"):
    raise ValueError(f"configs/finetune.py takes ':probe' (default) or ':full', got {arg!r}.")
  config = demo.get_config()
  config.init_from = "workdir/demo/export"
  config.init_skip = ("fc.*",)
  full = arg == "full"
  config.frozen_stages = -1 if full else 4
  config.frozen_bn = not full
  config.num_epochs = 5
  config.schedule = "cosine"
  config.learning_rate = 0.01 if full else 0.1
  config.weight_decay = 1e-4
  config.eval_every_epochs = 5
  config.checkpoint_every_steps = 100
  return config
