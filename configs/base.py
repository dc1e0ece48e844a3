"""The paper's ImageNet recipe (Implementation details, p. 5), shared by every ImageNet config.

SGD, momentum 0.9, weight decay 1e-4 coupled as in PyTorch SGD (applied to every parameter),
learning rate 0.1 for a global batch of 256, divided by 10 at epochs 30, 60 and 90, 100 epochs;
RandomResizedCrop 224 (area 0.08-1, aspect 3/4-4/3) + horizontal flip; eval: resize 256, centre
crop 224; He initialisation; LCT with G=64, w=0, b=1. The paper trained on 4 GPUs, so each BatchNorm
saw 64 images: `bn_group_size=64` reproduces that; 0 uses the whole global batch.
"""

import ml_collections

from lct_flax import dataset_defaults


def run_config() -> ml_collections.ConfigDict:
  """The keys of every run, whatever its task (the loop's, the optimizer's and schedule's,
  fine-tuning's), at the paper's ImageNet values; configs/detection/base.py extends it too."""
  config = ml_collections.ConfigDict()
  config.batch_size = 256                 # global, over all devices and processes
  config.num_epochs = 100
  config.num_train_steps = -1             # -1: num_epochs * steps_per_epoch
  config.seed = 0

  config.learning_rate = 0.1              # for `batch_size` as given (no automatic scaling)
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4              # coupled: g + wd * p, as torch.optim.SGD
  config.schedule = "step"                # "step" (x lr_decay_factor at lr_decay_epochs) | "cosine"
  config.lr_decay_epochs = (30, 60, 90)
  config.lr_decay_fractions = ()          # or: the decays at these fractions of the run instead
  config.lr_decay_factor = 0.1
  config.warmup_epochs = 0.0              # linear warm-up, before either schedule ...
  config.warmup_steps = 0                 # ... or over this many steps when > 0
  config.warmup_ratio = 0.0               # ... from this fraction of the learning rate
  config.grad_clip_norm = 0.0             # > 0: gradients scaled down to this global norm
  config.half_precision = False           # bfloat16 compute, float32 parameters and optimizer

  # Fine-tuning (lct_flax.finetuning, lct_flax.freezing). Applied only to a workdir without
  # checkpoints: resuming always wins.
  config.init_from = ""                   # export dir, or torch-layout .safetensors / .npz file
  config.init_skip = ()                   # fnmatch patterns of torch names not to load ("fc.*")
  config.frozen_stages = -1               # -1 none; 0 the stem; s the stem and layer1..layer s
  config.norm_eval = False                # BatchNorm: running statistics (mmdetection's norm_eval)
  config.frozen_bn = False                # ... and frozen scale and bias too

  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3
  config.log_every_steps = 100
  config.eval_every_epochs = 1            # 0: only at the end
  config.profile_start_step = -1          # >= 0: JAX profiler trace of steps [start, start + num)
  config.profile_num_steps = 5            # into the workdir (TensorBoard's profile tab)
  return config


def get_config() -> ml_collections.ConfigDict:
  """The ImageNet classification recipe: a plain ResNet-50 (`imagenet_config` for the others)."""
  config = run_config()
  config.model = ml_collections.ConfigDict({
      "name": "resnet50",
      "attention": "none",
      "attention_kwargs": ml_collections.ConfigDict(),
      "width": 1.0,
      "small_stem": False,
      "zero_init_last_bn": False,
  })
  config.dataset = dataset_defaults.default_dataset_config("imagenet2012")
  config.label_smoothing = 0.0
  config.bn_group_size = 0                # 0: BatchNorm statistics over the global batch
  return config


# Each block's options as the paper has them: LCT G=64, w=0, b=1 with eqs. 2-5 (Tables 2, 3, 5);
# SE reduction 16 (SENet, Table 1); SE+ the same, its context normalised in 64 groups (Table 4).
PAPER_BLOCKS = {
    "none": {},
    "se": {"reduction": 16},
    "se_norm": {"reduction": 16, "groups": 64},
    "lct": {"groups": 64, "w_init": 0.0, "b_init": 1.0, "use_norm": True, "use_transform": True},
}


def config_argument(arg: str | None) -> tuple[str | None, dict]:
  """Parses the part after ':' in --config: an optional block name first, then KEY=VALUE options
  ('se', 'lct,groups=32', 'groups=32,w_init=1,b_init=0,use_norm=False')."""
  if not arg:
    return None, {}
  items = [item.strip() for item in arg.split(",")]
  block = items.pop(0) if items[0] in PAPER_BLOCKS else None
  options = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config argument {item!r} is neither a block ({', '.join(PAPER_BLOCKS)}) "
                       f"nor KEY=VALUE (e.g. groups=32).")
    options[key.strip()] = _parse_value(value.strip())
  return block, options


def _parse_value(value: str):
  if value in ("True", "False"):
    return value == "True"
  for kind in (int, float):
    try:
      return kind(value)
    except ValueError:
      pass
  return value


def imagenet_config(model: str, attention: str, arg: str | None = None,
                    blocks: dict = PAPER_BLOCKS) -> ml_collections.ConfigDict:
  """The recipe with `model` and `attention` at its options in `blocks`. `arg` may name another
  block, which comes with its own options from `blocks` (`:se`, `:none`: Table 1's comparison in
  one flag), then override options (`:groups=32`: Tables 2-5)."""
  block, options = config_argument(arg)
  attention = block or attention
  config = get_config()
  config.model.name = model
  config.model.attention = attention
  config.model.attention_kwargs = ml_collections.ConfigDict({**blocks[attention], **options})
  if model == "resnet101":
    config.batch_size = 220               # the paper's ResNet-101 batch (GPU memory), lr still 0.1
  return config
