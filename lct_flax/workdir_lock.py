"""One training run per workdir: a lock file that the run's process 0 holds from start to end.

Without it, a scheduler that requeues a job whose first copy is still alive starts a second run
that resumes from the first one's checkpoints and writes into the same directory. The lock is
`WORKDIR/train.lock`, a small JSON record (host, pid, start time, command; the boot id and the
process's start time, which tell a live holder from a dead one whose pid was reused; a token).

It must work on local disks and on shared file systems (NFS, mounted buckets), where `flock` and
`O_EXCL` may not be honoured, so the record is written completely to a file of its own and then
hard-linked to the lock's name, which succeeds for one process only (the classic NFS-safe create,
confirmed by the link count, since a retried NFS link may report EEXIST after succeeding); where
hard links are not supported the lock is created with `O_CREAT | O_EXCL`.

* A live holder: refused, naming it.
* A dead holder on this host (crash, `kill -9`, reboot): taken over, with a warning.
* A holder on another host, whose process cannot be checked from here: refused with the lock's
  age (the holder refreshes the file's time every minute: its "heartbeat") unless
  `force=True` (`train.py --force_unlock`).

Process 0 alone takes the lock; the other processes of a multi-process run learn the outcome from
it. Readers (export, evaluate, analysis) never take it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Iterator, Optional

from absl import logging

from lct_flax import fileio

LOCK_FILE = "train.lock"
HEARTBEAT_SECONDS = 60.0
_ATTEMPTS = 5
# link(2) errors that mean "no hard links on this file system": fall back to O_EXCL.
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK,
                  errno.EXDEV)


class WorkdirLockError(RuntimeError):
  """The workdir is held by another run (or cannot be locked)."""


class TerminatedError(RuntimeError):
  """SIGTERM arrived while the run was starting (outside the loop's own preemption handling)."""


def check_writable(workdir: str) -> None:
  """Creates `workdir` if needed and refuses one that cannot be written, before any work."""
  reason = fileio.unwritable_reason(workdir)
  if reason:
    raise WorkdirLockError(f"workdir {workdir} is not writable ({reason}); choose another "
                           f"--workdir.")


def _read_text(path: str) -> Optional[str]:
  try:
    with open(path) as f:
      return f.read()
  except (FileNotFoundError, UnicodeDecodeError):
    return None


def _boot_id() -> Optional[str]:
  text = _read_text("/proc/sys/kernel/random/boot_id")
  return text.strip() if text else None


def _pid_namespace() -> Optional[str]:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return None


def _process_start(pid: int) -> Optional[int]:
  """The process's start time in clock ticks since boot (/proc), None where unavailable."""
  text = _read_text(f"/proc/{pid}/stat")
  if not text:
    return None
  return int(text.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces


def _this_process() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "boot_id": _boot_id(),
          "pid_namespace": _pid_namespace(), "process_start": _process_start(os.getpid()),
          "started": time.time(), "command": " ".join(sys.argv), "token": uuid.uuid4().hex}


def _when(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _age(seconds: float) -> str:
  seconds = max(0, int(seconds))
  if seconds < 120:
    return f"{seconds} s"
  if seconds < 7200:
    return f"{seconds // 60} min"
  return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class _Holder:
  """What a lock file says about its holder, as read (`raw` None: the file vanished)."""

  def __init__(self, path: str):
    self.raw = _read_text(path)
    try:
      record = json.loads(self.raw) if self.raw else None
      self.mtime = os.stat(path).st_mtime
    except (ValueError, OSError):
      record, self.mtime = None, time.time()
    valid = (isinstance(record, dict) and isinstance(record.get("pid"), int)
             and isinstance(record.get("host"), str))
    self.record = record if valid else None

  def is_same_machine(self) -> bool:
    """Same host name, boot and pid namespace: its pid can be checked from here."""
    r, me = self.record, _this_process()
    return all(r.get(k) == me[k] for k in ("host", "boot_id", "pid_namespace"))

  def is_stale(self) -> bool:
    """Known dead: its process is gone (or is another one under the same pid), or its host
    restarted since (same host name, another boot id)."""
    r = self.record
    if r.get("host") != socket.gethostname():
      return False
    if r.get("boot_id") and _boot_id() and r["boot_id"] != _boot_id():
      return True
    if not self.is_same_machine():
      return False
    try:
      os.kill(int(r["pid"]), 0)
    except ProcessLookupError:
      return True
    except PermissionError:
      pass  # alive, another user's
    start = _process_start(int(r["pid"]))
    return start is not None and r.get("process_start") not in (None, start)

  def describe(self) -> str:
    r = self.record
    return (f"pid {r.get('pid')} on host {r.get('host')}, started {_when(r.get('started', 0))}"
            f" (`{r.get('command', '?')}`)")


def _create(path: str, record: dict) -> bool:
  """Atomically creates the lock file holding `record`; False if it exists."""
  text = json.dumps(record, indent=2) + "\n"
  staging = f"{path}.{record['token']}"
  try:
    with open(staging, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    try:
      os.link(staging, path)
    except FileExistsError:
      pass
    except OSError as error:
      if error.errno not in _NO_HARD_LINKS:
        raise
      return _create_exclusive(path, text)
    return os.stat(staging).st_nlink == 2
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(staging)


def _create_exclusive(path: str, text: str) -> bool:
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  return True


def _remove_if_unchanged(path: str, holder: _Holder, token: str) -> None:
  """Removes the lock file if it still is the one `holder` read. It is first renamed to a name of
  our own, so that of several processes taking over the same stale lock only one removes it; one
  that finds it moved a newer lock (another process's takeover) puts that back."""
  aside = f"{path}.{token}.stale"
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return
  try:
    if _read_text(aside) != holder.raw:
      with contextlib.suppress(FileExistsError):
        os.link(aside, path)
  finally:
    os.remove(aside)


class WorkdirLock:
  """A held lock: `release()` removes it (if it is still ours); a daemon thread refreshes its
  modification time every HEARTBEAT_SECONDS."""

  def __init__(self, path: str, record: dict):
    self.path, self.record = path, record
    self._stop = threading.Event()
    self._heartbeat = threading.Thread(target=self._beat, name="workdir-lock-heartbeat",
                                       daemon=True)
    self._heartbeat.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self) -> None:
    self._stop.set()
    holder = _Holder(self.path)
    if holder.record and holder.record.get("token") == self.record["token"]:
      os.remove(self.path)
    else:
      logging.warning("The lock %s is no longer this run's (%s); leaving it.", self.path,
                      holder.describe() if holder.record else "gone")


def acquire(workdir: str, *, force: bool = False) -> WorkdirLock:
  """Takes the lock of `workdir` (see the module docstring); WorkdirLockError if it is held."""
  check_writable(workdir)
  path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
  record = _this_process()
  for _ in range(_ATTEMPTS):
    with fileio.reporting_write_errors(what="the workdir lock", directory=workdir):
      created = _create(path, record)
    if created:
      return WorkdirLock(path, record)
    holder = _Holder(path)
    if holder.raw is None:
      continue  # released meanwhile
    if holder.record is None:
      if not force:
        raise WorkdirLockError(f"cannot read the lock {path}; if no run is using {workdir}, "
                               f"rerun with --force_unlock.")
      logging.warning("Removing the unreadable lock %s (--force_unlock).", path)
    elif holder.is_stale():
      logging.warning("Taking over the lock %s of %s, which is no longer running.", path,
                      holder.describe())
    elif force and not holder.is_same_machine():
      logging.warning("Taking over the lock %s of %s (--force_unlock; last heartbeat %s ago).",
                      path, holder.describe(), _age(time.time() - holder.mtime))
    elif holder.is_same_machine():
      raise WorkdirLockError(f"workdir {workdir} is in use by another training run: "
                             f"{holder.describe()}; wait for it to end or stop it, or use "
                             f"another --workdir.")
    else:
      raise WorkdirLockError(
          f"workdir {workdir} is locked by a run on another host: {holder.describe()}, last "
          f"heartbeat {_age(time.time() - holder.mtime)} ago; if that run is gone, rerun with "
          f"--force_unlock.")
    _remove_if_unchanged(path, holder, record["token"])
  raise WorkdirLockError(f"could not lock {path}: other processes keep taking it; try again.")


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
  """SIGTERM raises TerminatedError (so that the lock is released on the way out) wherever the
  loop's PreemptionWatcher does not handle it (it installs its own handler for the loop)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    raise TerminatedError("stopped by SIGTERM outside the training loop; the checkpoints are "
                          "intact. Run the same command to resume.")

  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def hold(workdir: str, *, force: bool = False, process_index: int = 0,
         process_count: int = 1) -> Iterator[Optional[WorkdirLock]]:
  """Process 0 holds the workdir's lock for the body; every process raises WorkdirLockError if
  it could not be taken. Released on every way out (errors, Ctrl-C, SIGTERM)."""
  lock, error = None, None
  if process_index == 0:
    try:
      lock = acquire(workdir, force=force)
    except WorkdirLockError as e:
      error = e
  if process_count > 1:
    import numpy as np
    from jax.experimental import multihost_utils
    if not multihost_utils.broadcast_one_to_all(np.int32(error is None)) and error is None:
      error = WorkdirLockError(f"process 0 could not lock workdir {workdir}; see its output.")
  if error is not None:
    raise error
  try:
    with _sigterm_raises() if process_count == 1 else contextlib.nullcontext():
      yield lock
  finally:
    if lock is not None:
      lock.release()
