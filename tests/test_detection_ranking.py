"""`ranking.ranked`: the top k of a row, bit for bit `lax.top_k`'s, for any k (the sampler's and
the proposals' whole rows included)."""

import jax
import numpy as np

from lct_flax.detection import ranking


def test_ranking_a_whole_row_gives_top_k_of_it_bitwise():
  """`ranked` of a whole row (count >= n) equals `lax.top_k` of it: indices and value bits, ties
  in index order, signed zeros and infinities included; count < n is `top_k` itself."""
  rng = np.random.default_rng(0)
  values = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 0.5], np.float32), 40)
  for count in (40, 41, 60, 17):
    expected = jax.lax.top_k(values, min(count, 40))
    got = jax.jit(ranking.ranked, static_argnums=1)(values, count)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(expected[1]))
    np.testing.assert_array_equal(np.asarray(got[0]).view(np.int32),
                                  np.asarray(expected[0]).view(np.int32))
