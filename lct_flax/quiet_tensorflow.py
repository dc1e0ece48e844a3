"""Keeps TensorFlow's start-up banners off the console of the command-line tools, and Keras out
of their start-up.

Importing TensorFlow 2.21 prints, through absl's C++ logging before anything initialised it,
"oneDNN custom operations are on ..." (twice: two of its libraries carry the message) and
"This TensorFlow binary is optimized to use available CPU instructions ...". The first is an INFO
line that TF_CPP_MIN_LOG_LEVEL does not reach. `install()` (lct_flax.cli calls it for every entry
point) sets TF_CPP_MIN_LOG_LEVEL=1 unless the user chose a level, and wraps the one
`import tensorflow`, whichever module makes it (input_pipeline, tfds): while it runs, the
process's stderr goes to a temporary file, and afterwards everything but the C++ INFO records is
written to the real stderr. oneDNN stays on: numerics are unchanged.

The same import also loads Keras 3 (`keras.src.optimizers`, to register its optimizers for
SavedModels), a third of its time (5.4 -> 3.3 CPU s with tfds here), though no command uses Keras.
While TensorFlow's own module runs, importing `keras` fails (TensorFlow passes over the failure);
afterwards it works, and `tf.keras` loads Keras on first use as usual.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from typing import Iterator

# absl's C++ log record: severity letter, MMDD, time, thread id, file:line].
_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ")
_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def without_info_records(text: str) -> str:
  """`text` (captured stderr) minus absl INFO records, their continuation lines and the
  pre-initialisation notice."""
  kept, dropping = [], False
  for line in text.splitlines(keepends=True):
    if _RECORD.match(line):
      dropping = line.startswith("I")
    elif line.rstrip("\n") == _PREAMBLE:
      dropping = True
      continue
    if not dropping:
      kept.append(line)
  return "".join(kept)


@contextlib.contextmanager
def _info_records_dropped() -> Iterator[None]:
  """Captures file descriptor 2 for the duration and passes on all but the INFO records."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      rest = without_info_records(capture.read().decode(errors="replace"))
      if rest:
        sys.stderr.write(rest)
        sys.stderr.flush()


class _KerasRefused(importlib.abc.Loader):
  """Fails the execution of `keras` (its spec stays the real one: TensorFlow reads its path)."""

  def create_module(self, spec):
    return None

  def exec_module(self, module) -> None:
    raise ImportError("keras is not loaded while TensorFlow starts (lct_flax.quiet_tensorflow)")


class _KerasFinder(importlib.abc.MetaPathFinder):
  """Finds `keras` as usual, with a loader that refuses it."""

  def find_spec(self, fullname, path, target=None):
    if fullname != "keras":
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is not None:
      spec.loader = _KerasRefused()
    return spec


@contextlib.contextmanager
def _keras_refused() -> Iterator[None]:
  finder = _KerasFinder()
  sys.meta_path.insert(0, finder)
  try:
    yield
  finally:
    sys.meta_path.remove(finder)


class _QuietLoader(importlib.abc.Loader):
  """Runs the wrapped loader's `exec_module` with INFO records dropped and Keras refused, then
  steps aside."""

  def __init__(self, loader: importlib.abc.Loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module) -> None:
    module.__spec__.loader = module.__loader__ = self._loader
    with _info_records_dropped(), _keras_refused():
      self._loader.exec_module(module)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` as usual, once, and gives it the quiet loader."""

  def find_spec(self, fullname, path, target=None):
    if fullname != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(fullname)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


def install() -> None:
  """Quiets the coming TensorFlow import (nothing to do if it already happened)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  if "tensorflow" not in sys.modules and not any(
      isinstance(finder, _TensorFlowFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _TensorFlowFinder())
