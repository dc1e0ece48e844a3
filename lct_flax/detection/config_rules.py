"""The detection task's config keys beyond every task's (`config_schema.COMMON_RULES`):
`config.model` (the `model_specs.DetectorSpec` fields), the detection dataset's keys
(`detection.data_config`), and the one check across sections: the data's box convention is the
model's. Plain Python: read before JAX loads.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from lct_flax import model_specs
from lct_flax.schema_rules import Integer, Integers, OneOf, Problem, Real, Shapes

RULES: dict[str, Any] = {
    **model_specs.DetectorSpec.config_rules(),
    "dataset.img_scale": Integers(2, minimum=1),
    "dataset.canvases": Shapes(),
    "dataset.size_divisor": Integer(minimum=1, required=False),
    "dataset.flip_ratio": Real(0, 1, required=False),
    "dataset.max_instances": Integer(minimum=1, required=False),
    "dataset.min_image_size": Integer(minimum=0, required=False),
    "dataset.box_convention": OneOf(model_specs.CONVENTIONS, required=False),
}


def _box_convention_is_the_models(c: Mapping[str, Any]) -> Optional[Problem]:
  data, model = c.get("dataset.box_convention", "mmdet_v1"), c.get("model.convention")
  if model is not None and data != model:
    return "dataset.box_convention", (
        f"config.dataset.box_convention={data!r} differs from config.model.convention={model!r}; "
        f"set both to the same value.")
  return None


CROSS_CHECKS: tuple[Callable[[Mapping[str, Any]], Optional[Problem]], ...] = (
    _box_convention_is_the_models,)
