"""The kinds of config values and their allowed ranges (`Integer`, `Real`, `Flag`, `Name`,
`OneOf`, `Numbers`, `Names`, `Integers`, `Shapes`, `Text`, `Record`): `allows(value)` and the
`describe()` text of a refusal; a `Problem` is a refused key and its one-line message. Plain
Python, so that the config schema and the attention blocks' options (`lct_flax.blocks`) are
checked before JAX or TensorFlow load.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, Optional

Problem = tuple[str, str]  # (key, message)


def problem(key: str, value: Any, allowed: str) -> Problem:
  return key, f"config.{key}={value!r} is not allowed: it must be {allowed}."


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def _bound(value: Any) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class Integer:
  """An int in [minimum, maximum] (either end may be open-ended), or one of `also`."""
  minimum: Optional[int] = None
  maximum: Optional[int] = None
  also: tuple[Optional[int], ...] = ()  # special values outside the range (-1: "from epochs")
  required: bool = True

  def allows(self, value: Any) -> bool:
    if value is None or _is_int(value):
      if value in self.also:
        return True
    if not _is_int(value):
      return False
    return ((self.minimum is None or value >= self.minimum) and
            (self.maximum is None or value <= self.maximum))

  def describe(self) -> str:
    if self.minimum is not None and self.maximum is not None:
      text = f"an integer in [{self.minimum}, {self.maximum}]"
    elif self.minimum is not None:
      text = f"an integer >= {self.minimum}"
    elif self.maximum is not None:
      text = f"an integer <= {self.maximum}"
    else:
      text = "an integer"
    return " or ".join([str(v) for v in self.also] + [text])


@dataclasses.dataclass(frozen=True)
class Real:
  """A finite number (int or float) between the bounds; `open_low`/`open_high` exclude them."""
  minimum: Optional[float] = None
  maximum: Optional[float] = None
  open_low: bool = False
  open_high: bool = False
  required: bool = True

  def allows(self, value: Any) -> bool:
    if not _is_real(value):
      return False
    if self.minimum is not None and (value < self.minimum or
                                     (self.open_low and value == self.minimum)):
      return False
    return self.maximum is None or not (value > self.maximum or
                                        (self.open_high and value == self.maximum))

  def condition(self) -> str:
    """"in [0, 1)", "> 0", ... or "" (any finite number)."""
    if self.minimum is not None and self.maximum is not None:
      return (f"in {'(' if self.open_low else '['}{_bound(self.minimum)}, "
              f"{_bound(self.maximum)}{')' if self.open_high else ']'}")
    if self.minimum is not None:
      return f"{'>' if self.open_low else '>='} {_bound(self.minimum)}"
    if self.maximum is not None:
      return f"{'<' if self.open_high else '<='} {_bound(self.maximum)}"
    return ""

  def describe(self) -> str:
    return f"a finite number {self.condition()}".rstrip()


@dataclasses.dataclass(frozen=True)
class Flag:
  required: bool = True

  def allows(self, value: Any) -> bool:
    return isinstance(value, bool)

  def describe(self) -> str:
    return "True or False"


@dataclasses.dataclass(frozen=True)
class Name:
  """A non-empty string without surrounding spaces (a dataset, split or directory name)."""
  optional: bool = False  # None allowed (e.g. data_dir: tfds' default)
  noun: str = "name"
  required: bool = True

  def allows(self, value: Any) -> bool:
    if value is None:
      return self.optional
    return isinstance(value, str) and bool(value) and value == value.strip()

  def describe(self) -> str:
    return ("None or " if self.optional else "") + f"a non-empty {self.noun}"


@dataclasses.dataclass(frozen=True)
class OneOf:
  choices: tuple[str, ...]
  required: bool = True

  def allows(self, value: Any) -> bool:
    return isinstance(value, str) and value in self.choices

  def describe(self) -> str:
    return "one of " + ", ".join(repr(c) for c in self.choices)


@dataclasses.dataclass(frozen=True)
class Numbers:
  """A tuple (or JSON list) of numbers, each allowed by `element`; `length` None: any length."""
  element: Real
  length: Optional[int] = None
  ascending: bool = False  # strictly
  required: bool = True

  def allows(self, value: Any) -> bool:
    if not isinstance(value, (tuple, list)):
      return False
    if self.length is not None and len(value) != self.length:
      return False
    if not all(self.element.allows(v) for v in value):
      return False
    return not self.ascending or all(a < b for a, b in zip(value, value[1:]))

  def describe(self) -> str:
    count = f"{self.length} finite numbers" if self.length else "a tuple of finite numbers"
    each = f", each {self.element.condition()}" if self.element.condition() else ""
    return count + each + (", strictly ascending" if self.ascending else "")


@dataclasses.dataclass(frozen=True)
class Names:
  """A tuple (or JSON list) of non-empty strings; may be empty."""
  required: bool = True

  def allows(self, value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(Name().allows(v) for v in value)

  def describe(self) -> str:
    return "a tuple of non-empty strings"


@dataclasses.dataclass(frozen=True)
class Integers:
  """A tuple (or JSON list) of `length` integers >= `minimum` (e.g. an image scale)."""
  length: int
  minimum: int = 1
  required: bool = True

  def allows(self, value: Any) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == self.length
            and all(_is_int(v) and v >= self.minimum for v in value))

  def describe(self) -> str:
    return f"{self.length} integers >= {self.minimum}"


@dataclasses.dataclass(frozen=True)
class Shapes:
  """A non-empty tuple of (height, width) pairs of positive integers (detection canvases)."""
  required: bool = True

  def allows(self, value: Any) -> bool:
    return (isinstance(value, (tuple, list)) and bool(value)
            and all(Integers(2).allows(pair) for pair in value))

  def describe(self) -> str:
    return "a non-empty tuple of (height, width) pairs of positive integers"


@dataclasses.dataclass(frozen=True)
class Text:
  """Any string, "" included (e.g. init_from: "" for none; whether the file exists is checked
  where it is read, as a resumed run does not read it)."""
  required: bool = True

  def allows(self, value: Any) -> bool:
    return isinstance(value, str)

  def describe(self) -> str:
    return "a string ('' for none)"


@dataclasses.dataclass(frozen=True)
class Record:
  """A mapping the run writes into config.json itself (provenance, not a setting)."""
  required: bool = False

  def allows(self, value: Any) -> bool:
    return isinstance(value, Mapping)

  def describe(self) -> str:
    return "a record written by train.py (leave it out of configs)"
