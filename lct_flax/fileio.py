"""Atomic file writes, and write failures (disk full and the like) told in one line.

Each write goes to a temporary file in the target's directory, is flushed to disk, and is then
renamed over the target (`os.replace` is atomic on POSIX file systems): a reader sees the old file
or the complete new one, never a partial one.

A write that fails at the file system (no space left, quota, read-only or failing disk) becomes a
`WriteError` whose one-line message names what was being written, the directory, the reason, the
free space there (`shutil.disk_usage`) and roughly what was needed, e.g.

    cannot write checkpoint 20 to /runs/a/checkpoints (No space left on device): 310.0 KiB free
    there, about 1.4 MiB needed. ...
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from typing import Any, BinaryIO, Callable, Iterator, Optional

# errno values that say the file system refused a write (not a bug in the writer).
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES,
                errno.EPERM)


class WriteError(RuntimeError):
  """A checkpoint, export, log or result could not be written (disk full, quota, read-only...)."""


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


def format_bytes(count: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if count < 1024 or unit == "GiB":
      return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
    count /= 1024
  raise AssertionError("unreachable")


def _existing(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def free_bytes(path: str) -> int:
  """Free space on the file system holding `path` (or its nearest existing parent)."""
  return shutil.disk_usage(_existing(path)).free


def _free_space(path: str) -> str:
  """"1.2 MiB free there", plus a note when the file system has no free inodes left."""
  text = f"{format_bytes(free_bytes(path))} free there"
  try:
    stats = os.statvfs(_existing(path))
  except OSError:
    return text
  return text + (" but no free inodes" if stats.f_files and not stats.f_favail else "")


def write_failure_reason(error: BaseException) -> Optional[str]:
  """The file-system reason behind `error` ("No space left on device"...), found in its chain of
  causes (an OSError with one of WRITE_ERRNOS) or, for libraries that re-raise such errors as
  their own (TensorFlow, TensorStore), in its message; None for any other error."""
  seen = set()
  cause: Optional[BaseException] = error
  while cause is not None and id(cause) not in seen:
    if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS:
      return os.strerror(cause.errno)
    seen.add(id(cause))
    cause = cause.__cause__ or cause.__context__
  message = str(error)
  return next((os.strerror(e) for e in WRITE_ERRNOS if os.strerror(e) in message), None)


def _message(what: str, directory: str, reason: str, needed_bytes: Optional[float],
             then: str) -> str:
  needed = f", about {format_bytes(needed_bytes)} needed" if needed_bytes else ""
  return (f"cannot write {what} to {directory} ({reason}): {_free_space(directory)}{needed}. "
          f"{then}").strip()


def write_error(error: BaseException, *, what: str, directory: str,
                needed_bytes: Optional[float] = None, then: str = "") -> Optional[WriteError]:
  """A WriteError telling `error` in one line, or None if it is not a file-system failure."""
  reason = write_failure_reason(error)
  if reason is None:
    return None
  return WriteError(_message(what, directory, reason, needed_bytes, then))


def check_free_space(*, what: str, directory: str, needed_bytes: float, then: str = "") -> None:
  """WriteError before writing anything when `directory` has less than `needed_bytes` free."""
  if free_bytes(directory) < needed_bytes:
    raise WriteError(_message(what, directory, "not enough free space", needed_bytes, then))


@contextlib.contextmanager
def reporting_write_errors(*, what: str, directory: str, needed_bytes: Optional[float] = None,
                           then: str = "") -> Iterator[None]:
  """Turns a file-system failure inside the block into a WriteError (see `write_error`)."""
  try:
    yield
  except WriteError:
    raise
  except Exception as error:  # pylint: disable=broad-except  # TF and TensorStore wrap OSErrors
    failure = write_error(error, what=what, directory=directory, needed_bytes=needed_bytes,
                          then=then)
    if failure is None:
      raise
    raise failure from error


def temporary_prefix(name: str) -> str:
  """Prefix of temporary files and directories made for `name` by this process: its pid and host
  tell an abandoned one (its process is gone) from one still being written."""
  return f".{name}.tmp-{os.getpid()}@{socket.gethostname()}."


def remove_abandoned_temporaries(directory: str, name: str) -> list[str]:
  """Removes the temporaries for `name` in `directory` that a process of this host which is no
  longer running left behind (e.g. an export killed mid-write); returns their paths."""
  pattern = re.compile(rf"^\.{re.escape(name)}\.tmp-(\d+)@{re.escape(socket.gethostname())}\.")
  removed = []
  for entry in os.listdir(directory) if os.path.isdir(directory) else ():
    match = pattern.match(entry)
    if match and not _pid_running(int(match.group(1))):
      path = os.path.join(directory, entry)
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)
      removed.append(path)
  return removed


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def atomic_write(path: str, write: Callable[[BinaryIO], Any]) -> None:
  """Calls `write(binary file)` on a temporary file next to `path`, then renames it into place.
  A file-system failure raises WriteError, and nothing is left behind."""
  path = os.path.abspath(path)
  directory = os.path.dirname(path)
  tmp, written = None, 0
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(os.path.basename(path)), dir=directory)
    with os.fdopen(fd, "wb") as f:
      try:
        write(f)
      finally:
        written = f.tell()
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; these are ordinary files
    os.replace(tmp, path)
  except BaseException as error:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
    failure = write_error(error, what=os.path.basename(path), directory=directory,
                          needed_bytes=written)
    if failure is not None:
      raise failure from error
    raise
  fsync_dir(directory)


def unwritable_reason(directory: str) -> Optional[str]:
  """None if a file can be created in `directory` (made if missing), else why not."""
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
      pass
  except OSError as error:
    return error.strerror or str(error)
  return None


def write_json_atomically(path: str, value: Any) -> None:
  """`value` as indented, key-sorted JSON at `path`, written atomically."""
  text = json.dumps(value, indent=2, sort_keys=True) + "\n"
  atomic_write(path, lambda f: f.write(text.encode()))
