"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Each write goes to a temporary file in the target's directory, is flushed to disk, and is then
renamed over the target (`os.replace` is atomic on POSIX file systems).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable


def current_umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def fsync_dir(path: str) -> None:
  """Makes a rename inside `path` durable (best effort: not every file system allows it)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], Any]) -> None:
  """Calls `write(binary file)` on a temporary file next to `path`, then renames it into place."""
  path = os.path.abspath(path)
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; these are ordinary files
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_dir(directory)


def write_json_atomically(path: str, value: Any) -> None:
  """`value` as indented, key-sorted JSON at `path`, written atomically."""
  text = json.dumps(value, indent=2, sort_keys=True) + "\n"
  atomic_write(path, lambda f: f.write(text.encode()))
