"""The optimizer and learning-rate schedule every task trains with (the paper's, Sec. 4).

ImageNet (Table 1): SGD with momentum 0.9 and weight decay 1e-4 coupled as in PyTorch, lr 0.1
per 256 images divided by 10 every 30 epochs. COCO (Tables 6-7, mmdetection v1): the same SGD
with mmcv's linear warm-up, a step schedule and gradient clipping.
"""

from __future__ import annotations

import ml_collections
import optax


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate: linear warm-up, then the step schedule (lr x `lr_decay_factor` at each
  of `lr_decay_epochs`, as PyTorch's StepLR/MultiStepLR stepped once per epoch, or at each of
  `lr_decay_fractions` of the run's steps) or cosine decay to 0 at the end of training.

  The warm-up lasts `warmup_steps` (when > 0) or `warmup_epochs` and rises linearly from
  `warmup_ratio` x lr (default 0) to lr: mmcv's linear warm-up (mmdetection: 500 steps from 1/3).
  """
  total = total_steps(config, steps_per_epoch)
  warmup_steps = (config.get("warmup_steps", 0)
                  or int(round(config.warmup_epochs * steps_per_epoch)))
  if config.schedule == "step":
    decays = ([int(f * total) for f in config.get("lr_decay_fractions", ())]
              or [int(e * steps_per_epoch) for e in config.lr_decay_epochs])
    main = optax.piecewise_constant_schedule(
        config.learning_rate, {step - warmup_steps: config.lr_decay_factor for step in decays})
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(config.learning_rate, max(1, total - warmup_steps))
  else:
    raise ValueError(f"unknown schedule {config.schedule!r}; use 'step' or 'cosine'.")
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(config.get("warmup_ratio", 0.0) * config.learning_rate,
                                 config.learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """torch.optim.SGD: g <- g + wd * p (coupled decay, every parameter); buf <- m * buf + g;
  p <- p - lr * buf. With `grad_clip_norm` > 0 the gradients are first scaled down to that global
  L2 norm (mmdetection's grad_clip: clip_grad_norm_ before the SGD step, which adds the decay)."""
  clip = config.get("grad_clip_norm", 0.0)
  return optax.chain(
      *([optax.clip_by_global_norm(clip)] if clip > 0 else []),
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """num_train_steps when set, else num_epochs of `steps_per_epoch` steps."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch
