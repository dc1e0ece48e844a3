"""The export format: a directory of two files, neither of which runs code when read (no pickle).

* ``variables.npz``: the inference variables only (``params`` and ``batch_stats``; no optimizer
  state, no RNG), one plain numeric array per leaf, named by its path joined with "/", e.g.
  ``params/layer1_0/lct/w`` or ``batch_stats/bn1/mean``. Written with ``numpy.savez`` and read
  with ``numpy.load(..., allow_pickle=False)``.
* ``export.json``: ``format`` and ``format_version``; ``variables_file`` and its ``sha256``; the
  name, shape and dtype of every array; ``model`` and ``dataset``, the sections the task writes
  (`lct_flax.tasks`: a classifier's has no ``task`` entry, a detector's has ``"detection"``);
  ``source`` (workdir, step) and ``training_config`` (the workdir's config.json), all plain JSON.

An export is written into a temporary directory next to the output and renamed into place when
complete, so a crash never leaves a half-written export that looks finished (the next write to the
same output removes a temporary directory that a killed one left; a failed write, e.g. a full disk,
removes its own and raises ``fileio.WriteError`` in one line); an existing export is replaced only
with ``overwrite=True``. This module knows no task: `lct_flax.export` checks the arrays against the
model a task builds from the ``model`` section.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Mapping, Optional

import numpy as np

from lct_flax import fileio

FORMAT = "lct_flax.export"
FORMAT_VERSION = 1
VARIABLES_FILE = "variables.npz"
METADATA_FILE = "export.json"
COLLECTIONS = ("params", "batch_stats")


class ExportError(ValueError):
  """An export (or the workdir it is made from) is missing, damaged or would be overwritten."""


def _flatten(variables: Mapping[str, Any], leaf=lambda x: x) -> dict[str, Any]:
  """{"params": {...}, "batch_stats": {...}} -> {"params/a/b": leaf(value), ...}."""
  flat = {}

  def visit(prefix, node):
    if isinstance(node, Mapping):
      for key in sorted(node):
        if "/" in str(key):
          raise ExportError(f"variable name {key!r} under {prefix} contains '/'.")
        visit(f"{prefix}/{key}", node[key])
    else:
      flat[prefix] = leaf(node)

  for collection in COLLECTIONS:
    if collection in variables:
      visit(collection, variables[collection])
  return flat


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{"params": {...}, "batch_stats": {...}} -> {"params/a/b": array, ...} (numpy, host)."""
  return _flatten(variables, np.asarray)


def unflatten_variables(flat: Mapping[str, Any]) -> dict:
  nested: dict = {}
  for name, value in flat.items():
    node = nested
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return nested


def check_variables(flat: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
  """Refuses flat arrays whose names or shapes differ from `expected` (nested abstract
  variables, e.g. a `jax.eval_shape` of the model's init)."""
  expected = _flatten(expected)
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing {len(missing)} array(s), e.g. {missing[0]}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected array(s), e.g. {unexpected[0]}")
    raise ExportError(f"{where} do not fit the model: {'; '.join(parts)}.")
  for name, spec in expected.items():
    if tuple(flat[name].shape) != tuple(spec.shape):
      raise ExportError(f"{where} do not fit the model: {name} has shape "
                        f"{tuple(flat[name].shape)}, the model needs {tuple(spec.shape)}.")


# ---------------------------------------------------------------------------------------------
# Writing.


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(functools.partial(f.read, 1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def check_output_free(output: str, overwrite: bool) -> None:
  if os.path.lexists(output) and not overwrite:
    raise ExportError(f"{output} already exists; choose another --output or pass --overwrite "
                      f"to replace it.")
  if os.path.exists(output) and not os.path.isdir(output):
    raise ExportError(f"{output} exists and is not a directory; choose another --output.")


def write(output: str, flat: Mapping[str, np.ndarray], sections: Mapping[str, Any], *,
          versions: Mapping[str, str], overwrite: bool = False) -> str:
  """Writes the arrays `flat` and export.json with `sections` (model, dataset, source,
  training_config: plain JSON) to `output`; returns its absolute path."""
  output = os.path.abspath(output)
  check_output_free(output, overwrite)
  for name, array in flat.items():
    if array.dtype.kind not in "fiub" or array.dtype.fields is not None:
      raise ExportError(f"variable {name} has dtype {array.dtype}, which an export cannot hold.")
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  fileio.remove_abandoned_temporaries(parent, os.path.basename(output))  # of a killed export
  tmp = tempfile.mkdtemp(prefix=fileio.temporary_prefix(os.path.basename(output)), dir=parent)
  try:
    # mkdtemp makes it private; an export is an ordinary directory.
    os.chmod(tmp, 0o777 & ~fileio.current_umask())
    variables_path = os.path.join(tmp, VARIABLES_FILE)
    with open(variables_path, "wb") as f:
      np.savez(f, **flat)
      f.flush()
      os.fsync(f.fileno())
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": dict(versions),
        "variables_file": VARIABLES_FILE,
        "sha256": sha256(variables_path),
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)}
                   for name, a in flat.items()},
        **json.loads(json.dumps(dict(sections))),
    }
    with open(os.path.join(tmp, METADATA_FILE), "w") as f:
      json.dump(metadata, f, indent=2, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    fileio.fsync_dir(tmp)
    _move_into_place(tmp, output, overwrite)
  except BaseException as error:
    shutil.rmtree(tmp, ignore_errors=True)
    failure = fileio.write_error(
        error, what=f"export {os.path.basename(output)}", directory=parent,
        needed_bytes=sum(a.nbytes for a in flat.values()),
        then="Nothing was exported: free some space and export again.")
    if failure is not None:
      raise failure from error
    raise
  fileio.fsync_dir(parent)
  return output


def _move_into_place(tmp: str, output: str, overwrite: bool) -> None:
  check_output_free(output, overwrite)  # again: something may have appeared meanwhile
  if not os.path.lexists(output):
    os.rename(tmp, output)
    return
  # Replacing: move the old export aside, move the new one in, then delete the old one.
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.old-", dir=os.path.dirname(output))
  os.rmdir(old)
  os.rename(output, old)
  try:
    os.rename(tmp, output)
  except BaseException:
    os.rename(old, output)
    raise
  shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reading.


def damaged(path: str, what: str) -> ExportError:
  return ExportError(f"export {path} is damaged ({what}); export it again with "
                     f"`python -m lct_flax.export --workdir=... --output={path} --overwrite`.")


def read_metadata(export_dir: str) -> dict:
  """export.json of an export, checked for format and required sections."""
  export_dir = os.path.abspath(export_dir)
  if not os.path.isdir(export_dir):
    raise ExportError(f"no export at {export_dir}; create one with "
                      f"`python -m lct_flax.export --workdir=DIR --output={export_dir}`.")
  path = os.path.join(export_dir, METADATA_FILE)
  if not os.path.isfile(path):
    raise damaged(export_dir, f"{METADATA_FILE} is missing")
  try:
    with open(path) as f:
      metadata = json.load(f)
  except (ValueError, UnicodeDecodeError) as error:
    raise damaged(export_dir, f"{METADATA_FILE} is not valid JSON: {error}") from None
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    raise damaged(export_dir, f"{METADATA_FILE} is not an {FORMAT} file")
  if metadata.get("format_version") != FORMAT_VERSION:
    raise ExportError(f"export {export_dir} has format version {metadata.get('format_version')}; "
                      f"this code reads version {FORMAT_VERSION}: export it again.")
  for key in ("variables_file", "sha256", "model", "dataset"):
    if key not in metadata:
      raise damaged(export_dir, f"{METADATA_FILE} lacks {key!r}")
  return metadata


def load_variables(export_dir: str, metadata: Optional[dict] = None) -> dict[str, np.ndarray]:
  """The flat arrays of an export, after checking the sha256 of the arrays file."""
  export_dir = os.path.abspath(export_dir)
  metadata = read_metadata(export_dir) if metadata is None else metadata
  path = os.path.join(export_dir, metadata["variables_file"])
  if not os.path.isfile(path):
    raise damaged(export_dir, f"{metadata['variables_file']} is missing")
  if sha256(path) != metadata["sha256"]:
    raise damaged(export_dir, f"the sha256 of {metadata['variables_file']} does not match "
                              f"{METADATA_FILE}")
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {name: npz[name] for name in npz.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
    raise damaged(export_dir, f"cannot read {metadata['variables_file']}: {error}") from None
  for name, spec in metadata.get("arrays", {}).items():
    if name not in flat:
      raise damaged(export_dir, f"{metadata['variables_file']} lacks {name}")
    if list(flat[name].shape) != list(spec["shape"]) or str(flat[name].dtype) != spec["dtype"]:
      raise damaged(export_dir, f"{name} is {flat[name].dtype}{list(flat[name].shape)}, "
                                f"{METADATA_FILE} says {spec['dtype']}{spec['shape']}")
  return flat
