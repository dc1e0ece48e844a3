"""The channel-attention blocks by name, each registered once: its flax module, its options with
their allowed values, the submodule name it takes inside a residual unit (which is also its name
in torchvision/timm state dicts) and its label in figures and tables.

`config.model.attention` names a block; the config schema checks `model.attention_kwargs` against
its options; `models.ResNet` builds it; `analysis` and `pretrained` find it by its submodule name.
A new block is a module (a `attention.ChannelAttention` with a `gate`) and one `register` call:

    blocks.register(blocks.Block(name="eca", module=ECA, module_name="eca", label="ECA",
                                 options={"kernel_size": schema_rules.Integer(minimum=1)}))

Plain Python: the built-in blocks name their modules as "module:attribute", imported when built,
so the config schema reads this before JAX loads.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional, Union

from lct_flax import schema_rules as rules

NONE = "none"   # no attention block


@dataclasses.dataclass(frozen=True)
class Block:
  """One attention block. `defaults` are options its name implies (SE+ is SE with use_norm);
  `options` every option a config may set, with its rule."""
  name: str
  module: Union[str, Callable[..., Any]]
  options: Mapping[str, Any]
  module_name: str
  label: str
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def module_class(self) -> Callable[..., Any]:
    if callable(self.module):
      return self.module
    path, _, attribute = self.module.partition(":")
    return getattr(importlib.import_module(path), attribute)

  def factory(self, **options: Any) -> Callable[..., Any]:
    """A constructor of the block with `options` bound (ValueError naming unknown ones)."""
    unknown = sorted(set(options) - set(self.options))
    if unknown:
      raise ValueError(f"attention {self.name!r} has no option(s) {unknown}; "
                       f"its options are {sorted(self.options)}.")
    module = self.module_class()
    bound = {**self.defaults, **options}
    return lambda **kwargs: module(**bound, **kwargs)


BLOCKS: dict[str, Block] = {}


def register(block: Block) -> Block:
  """Adds (or replaces) `block` under its name."""
  if block.name == NONE:
    raise ValueError(f"{NONE!r} means no attention block; register the block under another name.")
  BLOCKS[block.name] = block
  return block


def names() -> tuple[str, ...]:
  """Every value `config.model.attention` may take ("none" first)."""
  return (NONE, *BLOCKS)


def get(name: Optional[str]) -> Optional[Block]:
  """The block registered as `name`; None for no block (None or "none")."""
  if name in (None, NONE):
    return None
  if name not in BLOCKS:
    raise ValueError(f"unknown attention {name!r}; choose one of {sorted(names())}.")
  return BLOCKS[name]


@dataclasses.dataclass(frozen=True)
class AttentionName:
  """The rule of `model.attention`: "none" or a registered block (when checked)."""
  required: bool = True

  def allows(self, value: Any) -> bool:
    return isinstance(value, str) and value in names()

  def describe(self) -> str:
    return "one of " + ", ".join(repr(name) for name in names())


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
  """The rule of `model.attention_kwargs`: a mapping; each option is checked against the rules
  of the block `model.attention` names (the config schema, `Block.factory`)."""
  required: bool = True

  def allows(self, value: Any) -> bool:
    return isinstance(value, Mapping)

  def describe(self) -> str:
    return "a section of attention options"


_SE_OPTIONS = {"reduction": rules.Integer(minimum=1), "use_norm": rules.Flag(),
               "groups": rules.Integer(minimum=1), "epsilon": rules.Real(0, open_low=True)}

register(Block(
    name="lct", module="lct_flax.attention:LCT", module_name="lct", label="LCT",
    options={"groups": rules.Integer(minimum=1), "epsilon": rules.Real(0, open_low=True),
             "w_init": rules.Real(), "b_init": rules.Real(), "use_norm": rules.Flag(),
             "use_transform": rules.Flag()}))
register(Block(name="se", module="lct_flax.attention:SE", module_name="se", label="SE",
               options=_SE_OPTIONS))
register(Block(name="se_norm", module="lct_flax.attention:SE", module_name="se", label="SE+",
               options=_SE_OPTIONS, defaults={"use_norm": True}))
