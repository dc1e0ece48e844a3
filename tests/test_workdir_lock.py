"""The workdir lock: exclusive among racing processes, live holders refused, dead ones taken over,
other hosts' locks reported with their age and overridden only by force, released on SIGTERM;
readers (export) never take it. Whole training runs on one workdir are in test_reliability.py."""

import errno
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from lct_flax import workdir_lock


def lock_path(workdir):
  return os.path.join(workdir, workdir_lock.LOCK_FILE)


def write_lock(workdir, **changes):
  """A lock file as another run would have written it, with `changes` to its record."""
  record = workdir_lock._this_process()  # pylint: disable=protected-access
  record.update(changes)
  os.makedirs(workdir, exist_ok=True)
  with open(lock_path(workdir), "w") as f:
    json.dump(record, f)
  return record


def dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_acquire_records_the_holder_and_release_removes_it(tmp_path):
  lock = workdir_lock.acquire(str(tmp_path / "run"))
  record = json.load(open(lock_path(tmp_path / "run")))
  assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
  assert abs(record["started"] - time.time()) < 60 and "command" in record
  assert sorted(os.listdir(tmp_path / "run")) == [workdir_lock.LOCK_FILE]
  lock.release()
  assert os.listdir(tmp_path / "run") == []


def test_a_live_holder_on_this_host_is_refused_by_name(tmp_path):
  lock = workdir_lock.acquire(str(tmp_path))
  try:
    with pytest.raises(workdir_lock.WorkdirLockError,
                       match=rf"is in use by another training run: pid {os.getpid()} on host "
                             rf"{socket.gethostname()}"):
      workdir_lock.acquire(str(tmp_path))
  finally:
    lock.release()


def test_a_dead_holder_is_taken_over_with_a_warning(tmp_path, caplog):
  pid = dead_pid()
  write_lock(str(tmp_path), pid=pid, process_start=None, token="old")
  lock = workdir_lock.acquire(str(tmp_path))
  assert json.load(open(lock_path(tmp_path)))["pid"] == os.getpid()
  assert f"pid {pid} on host {socket.gethostname()}" in caplog.text
  assert "no longer running" in caplog.text
  lock.release()


def test_a_reused_pid_or_a_reboot_counts_as_dead(tmp_path):
  # Our own (live) pid, but a process that started at another time: the old holder is gone.
  write_lock(str(tmp_path), process_start=1, token="old")
  workdir_lock.acquire(str(tmp_path)).release()
  if workdir_lock._boot_id():  # pylint: disable=protected-access
    write_lock(str(tmp_path), boot_id="another-boot", token="old")
    workdir_lock.acquire(str(tmp_path)).release()


def test_another_hosts_lock_is_refused_with_its_age_unless_forced(tmp_path):
  write_lock(str(tmp_path), host="gpu-node-7", pid=4242, token="other")
  stale = time.time() - 3 * 3600 - 5 * 60
  os.utime(lock_path(tmp_path), (stale, stale))
  with pytest.raises(workdir_lock.WorkdirLockError) as error:
    workdir_lock.acquire(str(tmp_path))
  message = str(error.value)
  assert "pid 4242 on host gpu-node-7" in message and "last heartbeat 3 h 5 min ago" in message
  assert "--force_unlock" in message and "\n" not in message
  lock = workdir_lock.acquire(str(tmp_path), force=True)
  assert json.load(open(lock_path(tmp_path)))["host"] == socket.gethostname()
  lock.release()


def test_an_unreadable_lock_needs_force(tmp_path):
  with open(lock_path(tmp_path), "w") as f:
    f.write("{not json")
  with pytest.raises(workdir_lock.WorkdirLockError, match="cannot read the lock"):
    workdir_lock.acquire(str(tmp_path))
  with open(lock_path(tmp_path), "w") as f:
    json.dump({"host": "h"}, f)
  with pytest.raises(workdir_lock.WorkdirLockError, match="cannot read the lock"):
    workdir_lock.acquire(str(tmp_path))
  workdir_lock.acquire(str(tmp_path), force=True).release()


def test_without_hard_links_the_lock_is_created_exclusively(tmp_path, monkeypatch):
  def no_links(src, dst):
    raise OSError(errno.EPERM, "Operation not permitted")

  monkeypatch.setattr(os, "link", no_links)
  lock = workdir_lock.acquire(str(tmp_path))
  with pytest.raises(workdir_lock.WorkdirLockError, match="in use by another training run"):
    workdir_lock.acquire(str(tmp_path))
  lock.release()
  assert os.listdir(tmp_path) == []


def test_the_holder_refreshes_the_lock_while_it_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.05)
  lock = workdir_lock.acquire(str(tmp_path))
  old = time.time() - 600
  os.utime(lock_path(tmp_path), (old, old))
  time.sleep(0.5)
  assert time.time() - os.path.getmtime(lock_path(tmp_path)) < 60
  lock.release()


def _contend(workdir, barrier, results):
  barrier.wait()
  try:
    lock = workdir_lock.acquire(workdir)
  except workdir_lock.WorkdirLockError:
    results.put("refused")
    return
  results.put("held")
  time.sleep(1.0)
  lock.release()


def test_of_many_racing_processes_exactly_one_gets_it(tmp_path):
  context = multiprocessing.get_context("spawn")
  barrier, results = context.Barrier(6), context.Queue()
  procs = [context.Process(target=_contend, args=(str(tmp_path), barrier, results))
           for _ in range(6)]
  for p in procs:
    p.start()
  outcomes = sorted(results.get(timeout=120) for _ in procs)
  for p in procs:
    p.join(60)
  assert outcomes == ["held"] + ["refused"] * 5
  assert not os.path.exists(lock_path(tmp_path))


def test_sigterm_while_holding_releases_the_lock(tmp_path):
  with pytest.raises(workdir_lock.TerminatedError, match="SIGTERM outside the training loop"):
    with workdir_lock.hold(str(tmp_path)):
      assert os.path.exists(lock_path(tmp_path))
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)
  assert not os.path.exists(lock_path(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_unwritable_workdir_is_refused(tmp_path):
  with pytest.raises(workdir_lock.WorkdirLockError, match="is not writable"):
    workdir_lock.acquire(os.path.join("/proc", "no_such_dir"))


def test_export_reads_a_workdir_without_taking_its_lock(tiny_demo_run, tmp_path):
  from lct_flax import export
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_demo_run.workdir, workdir)
  record = write_lock(workdir, host="gpu-node-7", token="training")
  output = export.export_workdir(workdir, str(tmp_path / "export"))
  assert json.load(open(os.path.join(output, "export.json")))["source"]["step"] == 40
  assert json.load(open(lock_path(workdir))) == record
