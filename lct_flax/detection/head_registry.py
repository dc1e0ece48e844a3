"""The R-CNN heads by name (`config.model.box_head`, `config.model.mask_head`), each registered
once with its role and module; plain Python, so the config schema reads the names before JAX
loads. Built in: "shared_2fc" and "fcn", the paper's (`heads.BoxHead`, `heads.MaskHead`).

The contract of a head: a box head maps (N, R, S, S, C) RoI features to float32 class logits
(N, R, K + 1) and deltas (N, R, K + 1 or 1, 4); a mask head maps (N, R, S, S, C) to float32 logits
(N, R, 2S, 2S, K + 1). It is built with `num_classes`, `hidden` (`model.fc_hidden` /
`model.mask_hidden`), `dtype` and, a box head, `class_agnostic`. A new head is a module and one
call, then `config.model.box_head = "shared_4conv_1fc"` selects it:

    head_registry.register(head_registry.Head(name="shared_4conv_1fc", role=head_registry.BOX,
                                              module=Shared4Conv1FC))
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Union

BOX, MASK = "box", "mask"
ROLES = (BOX, MASK)
# The paper's (mmdetection v1.0's) heads and widths: the FPN's channels, the box head's hidden
# layers and the mask head's convolutions; `model_specs.DetectorSpec`'s and
# `settings.DetectorSettings`' defaults.
BOX_DEFAULT, MASK_DEFAULT = "shared_2fc", "fcn"
FPN_CHANNELS, FC_HIDDEN, MASK_HIDDEN = 256, 1024, 256


@dataclasses.dataclass(frozen=True)
class Head:
  """A head by name: its role (BOX or MASK) and its module (a class, or "module:attribute",
  imported when built, so the config schema reads the names before JAX loads)."""
  name: str
  role: str
  module: Union[str, Callable[..., Any]]

  def build(self, **arguments: Any) -> Any:
    module = self.module
    if isinstance(module, str):
      path, _, attribute = module.partition(":")
      module = getattr(importlib.import_module(path), attribute)
    return module(**arguments)


HEADS: dict[str, Head] = {}


def register(head: Head) -> Head:
  """Adds (or replaces) `head` under its name."""
  if head.role not in ROLES:
    raise ValueError(f"a head's role is one of {ROLES}, got {head.role!r}.")
  HEADS[head.name] = head
  return head


def names(role: str) -> tuple[str, ...]:
  return tuple(name for name, head in HEADS.items() if head.role == role)


def get(name: str, role: str) -> Head:
  if name not in names(role):
    raise ValueError(f"unknown {role} head {name!r}; choose one of {sorted(names(role))}.")
  return HEADS[name]


@dataclasses.dataclass(frozen=True)
class HeadName:
  """The rule of `model.box_head` / `model.mask_head`: a registered head of `role`."""
  role: str
  required: bool = True

  def allows(self, value: Any) -> bool:
    return isinstance(value, str) and value in names(self.role)

  def describe(self) -> str:
    return "one of " + ", ".join(repr(name) for name in names(self.role))


register(Head(name=BOX_DEFAULT, role=BOX, module="lct_flax.detection.heads:BoxHead"))
register(Head(name=MASK_DEFAULT, role=MASK, module="lct_flax.detection.heads:MaskHead"))
