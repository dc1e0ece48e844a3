"""Which images go into which batch: per-epoch plans, grouped by canvas, as pure NumPy functions.

Train: mmdetection v1's ``GroupSampler`` (mmdet/datasets/loader/sampler.py) with the global
batch as its unit, because every device of a step must see the same canvas (one compiled program
per canvas): each canvas group is shuffled and padded to a multiple of the global batch by
repeating its first images, the groups are cut into global batches, and the batches are shuffled.
Process ``p`` of ``P`` takes slots ``[p * B / P, (p + 1) * B / P)`` of every global batch, so the
processes' batches together are exactly the single-process batches, on every process the same
number of steps. Epoch ``e`` of run ``seed`` draws its permutations and flips from
``SeedSequence([seed, e])``: the plan of any step is known without replaying earlier ones, which
makes resuming mid-epoch exact.

Eval: each canvas group in record order, cut into global batches; the last batch of a group is
padded with ``-1`` (masked) slots. Every image appears exactly once across processes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PADDING = -1


@dataclasses.dataclass(frozen=True)
class Plan:
  """Batches of one epoch: ``images`` int64 (steps, B) positions (``PADDING`` for masked eval
  slots), ``canvas`` int64 (steps,) canvas index of each batch, ``flip`` bool (steps, B)."""

  images: np.ndarray
  canvas: np.ndarray
  flip: np.ndarray

  def process_share(self, process_index: int, process_count: int) -> Plan:
    """This process's slots of every batch."""
    local = self.images.shape[1] // process_count
    columns = slice(process_index * local, (process_index + 1) * local)
    return Plan(self.images[:, columns], self.canvas, self.flip[:, columns])


def _groups(canvas_of_image, num_canvases):
  return [np.flatnonzero(canvas_of_image == c) for c in range(num_canvases)]


def steps_per_epoch(canvas_of_image, num_canvases: int, global_batch_size: int) -> int:
  """Batches per epoch: the sum over canvases of ceil(images on it / global batch)."""
  return sum(-(-len(g) // global_batch_size) for g in _groups(canvas_of_image, num_canvases))


def train_plan(canvas_of_image, num_canvases: int, global_batch_size: int, *, seed: int,
               epoch: int, flip_ratio: float) -> Plan:
  """Epoch ``epoch`` of the train stream (GroupSampler over global batches, see the module).

  ``canvas_of_image``: int (N,) canvas index of each trainable image; positions refer to it.
  """
  rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
  batches, canvases = [], []
  for canvas, members in enumerate(_groups(canvas_of_image, num_canvases)):
    if not len(members):
      continue
    shuffled = rng.permutation(members)
    padded = np.resize(shuffled, -(-len(members) // global_batch_size) * global_batch_size)
    batches.append(padded.reshape(-1, global_batch_size))
    canvases += [canvas] * (len(padded) // global_batch_size)
  order = rng.permutation(len(canvases))
  images = np.concatenate(batches)[order]
  flip = rng.random(images.shape) < flip_ratio
  return Plan(images, np.asarray(canvases, np.int64)[order], flip)


def eval_plan(canvas_of_image, num_canvases: int, global_batch_size: int) -> Plan:
  """Every image once, in record order within each canvas group; ``PADDING`` fills the rest."""
  batches, canvases = [], []
  for canvas, members in enumerate(_groups(canvas_of_image, num_canvases)):
    rows = -(-len(members) // global_batch_size)
    padded = np.full(rows * global_batch_size, PADDING, np.int64)
    padded[:len(members)] = members
    batches.append(padded.reshape(rows, global_batch_size))
    canvases += [canvas] * rows
  images = np.concatenate(batches) if batches else np.zeros((0, global_batch_size), np.int64)
  return Plan(images, np.asarray(canvases, np.int64), np.zeros(images.shape, bool))
