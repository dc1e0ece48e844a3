"""Pure pieces of classifier training and evaluation: the loss (`train_state.train_step` takes it),
the eval step and the metrics over a split.

The steps are compiled with `jax.jit` over a device mesh with one "data" axis: the batch is sharded
along it and the state replicated, so BatchNorm statistics (computed over the batch axis) are those
of the global batch, as with synchronised BatchNorm across GPUs. uint8 images are normalised with
the dataset's `mean`/`std` on the device (`pixels.normalize`); float images are taken as
normalised.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from lct_flax import pixels


class EmptySplitError(RuntimeError):
  """The eval split has no example."""


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32, with optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Per-example 1.0 where the label is among the k largest logits."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def loss(variables: dict, batch: dict, rng: jax.Array, *, model: Any, label_smoothing: float,
         mean: Optional[Sequence[float]] = None,
         std: Optional[Sequence[float]] = None) -> tuple[jax.Array, tuple[dict, Any]]:
  """The mean cross-entropy of a global batch in training mode (`rng` drives dropout), with the
  batch's top-1 and top-5 and the updated BatchNorm statistics."""
  logits, updates = model.apply(variables, pixels.normalize(batch["image"], mean, std),
                                train=True, mutable=["batch_stats"], rngs={"dropout": rng})
  value = jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))
  metrics = {"top1": jnp.mean(topk_correct(logits, batch["label"], 1)),
             "top5": jnp.mean(topk_correct(logits, batch["label"], 5))}
  return value, (metrics, updates["batch_stats"])


def eval_step(variables: dict, batch: dict, *, model: Any,
              mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None) -> dict:
  """Sums over the masked (real) examples of a padded eval batch: loss, top-1, top-5, count."""
  logits = model.apply(variables, pixels.normalize(batch["image"], mean, std), train=False)
  mask = batch["mask"].astype(jnp.float32)
  return {
      "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
      "top1": jnp.sum(topk_correct(logits, batch["label"], 1) * mask),
      "top5": jnp.sum(topk_correct(logits, batch["label"], 5) * mask),
      "count": jnp.sum(mask),
  }


def evaluate(variables: dict, batches: Iterator[dict], eval_fn: Callable) -> dict:
  """Loss, top-1 and top-5 over every example of the eval split (padding masked out);
  `eval_fn(variables, batch)` is a compiled `eval_step`."""
  totals = None
  for batch in batches:
    sums = eval_fn(variables, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise EmptySplitError("the eval split is empty.")
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"eval_loss": float(totals["loss"]) / count, "eval_top1": float(totals["top1"]) / count,
          "eval_top5": float(totals["top5"]) / count, "eval_count": count}
