"""tfds builders of our own. Importing this package registers them with tfds.

* ``sklearn_digits``: scikit-learn's bundled handwritten digits (offline, no download).
"""

from lct_flax.datasets import sklearn_digits  # noqa: F401  (registers the builder)
