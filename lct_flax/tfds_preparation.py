"""A tfds dataset prepared once, offline where its files must be put in place by hand, and found
prepared: the one path of the classification input and the detection data.

A `Source` says where the dataset lives (`data_dir`, default tfds'; `manual_dir`, default
`<data_dir>/downloads/manual`), the command that prepares it, and what the manual directory must
hold. Every failure is one line of the source's error type naming the directory and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import os
import shutil
import time
from typing import Any, Callable, Optional

import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class Source:
  """`command(manual_dir)` is the shell command that prepares the dataset; `missing(manual_dir)`
  the error for a manual directory that lacks the files preparation reads (None when complete or
  when nothing is read from it); `stale(builder, manual_dir)` the error for a prepared dataset
  whose source files have changed since (None when they have not, or cannot tell); `unknown` the
  hint for a name tfds does not know."""
  name: str
  data_dir: Optional[str]
  manual_dir: Optional[str]
  command: Callable[[str], str]
  error: type
  missing: Callable[[str], Optional[Exception]] = lambda manual_dir: None
  stale: Callable[[Any, str], Optional[Exception]] = lambda builder, manual_dir: None
  unknown: str = "use a tfds name (see tfds.list_builders())"


def builder(source: Source) -> Any:
  """The dataset's tfds builder (prepared or not)."""
  try:
    return tfds.builder(source.name, data_dir=source.data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise source.error(f"unknown dataset {source.name!r}; {source.unknown}.") from error


def manual_dir(source: Source, tfds_builder: Any) -> str:
  if source.manual_dir:
    return os.path.expanduser(source.manual_dir)
  return os.fspath(tfds_builder.data_dir_root / "downloads" / "manual")


def prepare(source: Source) -> None:
  """Prepares the dataset once (a no-op, said in the log, when it is already prepared). tfds'
  own console lines (sizes it does not know, nested progress bars) give way to two of ours."""
  from absl import logging
  tfds_builder = builder(source)
  directory = manual_dir(source, tfds_builder)
  if tfds_builder.is_prepared():
    stale = source.stale(tfds_builder, directory)
    if stale is not None:
      raise stale
    logging.info("%s is already prepared in %s.", source.name, tfds_builder.data_dir)
    return
  missing = source.missing(directory)
  if missing is not None:
    raise missing
  removed = remove_unfinished(tfds_builder)
  if removed:
    logging.info("Removed %d unfinished preparation(s) of %s that an interrupted run left: %s",
                 len(removed), source.name, ", ".join(removed))
  logging.info("Preparing %s in %s (once) ...", source.name, tfds_builder.data_dir_root)
  start = time.perf_counter()
  tfds.disable_progress_bar()
  with contextlib.redirect_stdout(io.StringIO()):
    tfds_builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=directory))
  splits = ", ".join(f"{split.num_examples} {name}" for name, split in
                     sorted(tfds_builder.info.splits.items()))
  logging.info("Prepared %s in %.0f s: %s examples.", source.name, time.perf_counter() - start,
               splits)


def remove_unfinished(tfds_builder: Any) -> list[str]:
  """Deletes the `incomplete.*` directories of this dataset version that a killed preparation
  left beside the one it would have made (tfds starts a new one each time); returns their names.
  Preparation runs on one process, so none of them is being written."""
  parent = os.path.dirname(os.fspath(tfds_builder.data_dir))
  names = sorted(os.path.basename(path) for path in glob.glob(
      os.path.join(parent, f"incomplete.*_{tfds_builder.version}")))
  for name in names:
    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
  return names


def prepared_builder(source: Source) -> Any:
  """The builder of the prepared dataset; one line saying how to prepare it otherwise."""
  tfds_builder = builder(source)
  if tfds_builder.is_prepared():
    return tfds_builder
  directory = manual_dir(source, tfds_builder)
  missing = source.missing(directory)
  if missing is not None:
    raise missing
  raise source.error(f"{source.name} is not prepared in {tfds_builder.data_dir_root}: run "
                     f"`{source.command(directory)}` once.")
