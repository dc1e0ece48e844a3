"""tfds builders of our own. Importing this package registers them with tfds.

* ``sklearn_digits``: scikit-learn's bundled handwritten digits (offline, no download).
* ``coco_instances``: COCO-format instances prepared offline from the COCO 2017 directory layout
  (configs ``2017`` and ``shapes``, the generated ``coco_shapes``).
"""

from lct_flax.datasets import coco_instances  # noqa: F401  (registers the builder)
from lct_flax.datasets import sklearn_digits  # noqa: F401  (registers the builder)
