"""The top k of one image's row (scores, priorities) in a form data parallelism splits by image.

`lax.top_k` with k equal to the row's length makes XLA's SPMD partitioner gather every image's
row onto each device (a GPU's, at least), while one with k < n is split by image; `ranked` takes
a whole row's top k over the row and one -inf after it instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ranked(values: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """`lax.top_k(values, min(count, n))` of `values` (n,), bit for bit: for count >= n, the top
  n of the row and one -inf after it (last among equals, so never among the n)."""
  n = values.shape[0]
  if count < n:
    return jax.lax.top_k(values, count)
  return jax.lax.top_k(jnp.append(values, -jnp.inf), n)
