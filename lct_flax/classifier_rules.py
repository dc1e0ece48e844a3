"""The classification task's config keys beyond every task's (`config_schema.COMMON_RULES`):
`config.model` (the `model_specs.ClassifierSpec` fields, and the residual BatchNorm's zero
initialisation), the input pipeline's dataset keys (`dataset_defaults`), label smoothing and the
BatchNorm group, and the checks across them. Plain Python: read before JAX loads.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from lct_flax import model_specs
from lct_flax.schema_rules import Flag, Integer, Numbers, Problem, Real, problem

RULES: dict[str, Any] = {
    **model_specs.ClassifierSpec.config_rules(),
    "model.zero_init_last_bn": Flag(required=False),
    "dataset.image_size": Integer(minimum=1),
    "dataset.resize_size": Integer(minimum=1, also=(None,), required=False),
    "dataset.crop_area_range": Numbers(Real(0, 1, open_low=True), length=2, required=False),
    "dataset.aspect_ratio_range": Numbers(Real(0, open_low=True), length=2, required=False),
    "dataset.random_flip": Flag(required=False),
    "dataset.shuffle_buffer": Integer(minimum=1, required=False),
    "dataset.cache": Flag(required=False),
    "label_smoothing": Real(0, 1, open_high=True),
    "bn_group_size": Integer(minimum=0),  # 0: the global batch
}


def _resize_not_below_crop(c: Mapping[str, Any]) -> Optional[Problem]:
  resize, size = c.get("dataset.resize_size"), c.get("dataset.image_size")
  if resize is not None and size is not None and resize < size:
    return problem("dataset.resize_size", resize,
                   f"None or an integer >= dataset.image_size={size}")
  return None


def _bn_groups_divide_batch(c: Mapping[str, Any]) -> Optional[Problem]:
  group, batch = c.get("bn_group_size"), c.get("batch_size")
  if group and batch and batch % group:
    return problem("bn_group_size", group, f"0 or a divisor of batch_size={batch}")
  return None


CROSS_CHECKS: tuple[Callable[[Mapping[str, Any]], Optional[Problem]], ...] = (
    _resize_not_below_crop, _bn_groups_divide_batch)
