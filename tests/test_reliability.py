"""Fault injection and refusals through the real entry points: SIGKILL at random moments (one of
them inside a checkpoint write), SIGTERM, damaged checkpoints, two runs on one workdir, a full
disk, and one clear line per bad input."""

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from child_env import child_environment
from lct_flax.tasks.classification import TASK as CLASSIFICATION
from test_workdir_lock import dead_pid, write_lock
from tiny import tiny_demo_config, tiny_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow's import banners, which the entry points keep off the console.
BANNERS = ("oneDNN", "absl::InitializeLog", "cpu_feature_guard", "AVX", "rebuild TensorFlow")


def train_command(workdir, flags, config="configs/demo.py"):
  return [sys.executable, os.path.join(REPO, "train.py"), f"--config={config}",
          f"--workdir={workdir}", *flags]


_STARTED = []


@pytest.fixture(autouse=True)
def _kill_leftover_runs():
  """A failing test must not leave its training processes running (they slow everything after)."""
  yield
  while _STARTED:
    proc = _STARTED.pop()
    if proc.poll() is None:
      proc.kill()
      proc.wait()


class Run:
  """A training process whose stderr is collected line by line as it runs."""

  def __init__(self, command, env=None):
    self.lines = []
    self.proc = subprocess.Popen(command, cwd=REPO, env=env or child_environment(), text=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _STARTED.append(self.proc)
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)

  def wait_for(self, text, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
      if any(text in line for line in self.lines):
        return
      if self.proc.poll() is not None:
        break
      time.sleep(0.01)
    raise AssertionError(f"never saw {text!r}:\n{''.join(self.lines)[-3000:]}")

  def finish(self, timeout=300):
    self.proc.wait(timeout)
    self._reader.join(10)
    return self.proc.returncode

  @property
  def output(self):
    return "".join(self.lines)


def state_leaves(config, workdir):
  import jax
  state = CLASSIFICATION.restore_state(config, str(workdir))
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def kill_during_checkpoint_write(run, checkpoints):
  """SIGKILLs `run` the moment an unfinished (temporary) checkpoint directory appears."""
  while run.proc.poll() is None:
    if os.path.isdir(checkpoints) and any("tmp" in n for n in os.listdir(checkpoints)):
      run.proc.send_signal(signal.SIGKILL)
      return True
    time.sleep(0.001)
  return False


# The uninterrupted run that the killed, locked-out and disk-full runs are compared with.
SHARED_RUN = dict(num_train_steps=40, checkpoint_every_steps=4, log_every_steps=1)


@pytest.fixture(scope="module")
def straight_run(_prepared_digits, tmp_path_factory):
  """The TrainState leaves after an uninterrupted train.py run of SHARED_RUN."""
  workdir = tmp_path_factory.mktemp("straight_run")
  run = Run(train_command(workdir, tiny_flags(_prepared_digits.data_dir, **SHARED_RUN)))
  assert run.finish() == 0, run.output[-3000:]
  return state_leaves(tiny_demo_config(_prepared_digits.data_dir, **SHARED_RUN), workdir)


def assert_same_as_straight_run(straight_run, data_dir, workdir):
  for a, b in zip(straight_run, state_leaves(tiny_demo_config(data_dir, **SHARED_RUN), workdir)):
    np.testing.assert_array_equal(a, b)


def test_sigkill_at_random_moments_loses_nothing(digits_config, straight_run, tmp_path):
  flags = tiny_flags(digits_config.data_dir, **SHARED_RUN)
  workdir = tmp_path / "killed"
  rng = random.Random(0)
  kills, hit_a_write, left_unfinished, outputs = 0, False, False, []
  while True:
    run = Run(train_command(workdir, flags))
    if kills == 0:
      run.wait_for("Training resnet18")
      hit_a_write = kill_during_checkpoint_write(run, workdir / "checkpoints")
      run.finish()
      left_unfinished = any("tmp" in n for n in os.listdir(workdir / "checkpoints"))
      kills += 1
    elif kills < 3:
      run.wait_for("Training resnet18")
      time.sleep(rng.uniform(0.0, 1.5))
      run.proc.send_signal(signal.SIGKILL)
      kills += 1
    returncode = run.finish()
    outputs.append(run.output)
    if returncode == 0:
      break
    assert returncode == -signal.SIGKILL, run.output[-3000:]
  assert hit_a_write and kills >= 3
  # The next run removed the unfinished checkpoint directory the kill left.
  assert not any("tmp" in n for n in os.listdir(workdir / "checkpoints"))
  if left_unfinished:
    assert "an unfinished checkpoint of an interrupted run" in outputs[1]
  assert_same_as_straight_run(straight_run, digits_config.data_dir, workdir)


def test_sigterm_checkpoints_the_current_step_and_exits_zero(digits_config, tmp_path):
  flags = tiny_flags(digits_config.data_dir, num_train_steps=400, log_every_steps=1)
  run = Run(train_command(tmp_path, flags))
  run.wait_for("step 3/400")
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == 0, run.output[-3000:]
  stopped = [line for line in run.lines if "Stopped at step" in line]
  assert len(stopped) == 1 and "Run the same command to resume" in stopped[0]
  step = int(stopped[0].split("Stopped at step ")[1].split()[0])
  assert os.listdir(tmp_path / "checkpoints") == [str(step)]
  resumed = Run(train_command(tmp_path, tiny_flags(
      digits_config.data_dir, num_train_steps=step + 2, log_every_steps=1)))
  assert resumed.finish() == 0, resumed.output[-3000:]
  assert f"from step {step}" in resumed.output
  assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == [step, step + 2]
  # The console: our lines as "HH:MM:SS message", no absl prefix on Python log lines, and no
  # oneDNN error line from the input pipeline (training and evaluation ran).
  assert any(re.match(r"\d\d:\d\d:\d\d Training resnet18", line) for line in resumed.lines)
  assert not [line for line in resumed.lines if re.match(r"[IWEF]\d{4} .*\.py:\d+\] ", line)]
  assert "oneDNN" not in resumed.output and "eval at step" in resumed.output


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(digits_config, tmp_path):
  config = tiny_demo_config(digits_config.data_dir, num_train_steps=4, checkpoint_every_steps=2)
  CLASSIFICATION.train_and_evaluate(config, str(tmp_path / "run"))
  files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "run" / "checkpoints" / "4")
           for f in fs]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  config.num_train_steps = 6
  result = CLASSIFICATION.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 6
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "4", "4.damaged", "6"]
  CLASSIFICATION.train_and_evaluate(config, str(tmp_path / "straight"))
  for a, b in zip(state_leaves(config, tmp_path / "straight"),
                  state_leaves(config, tmp_path / "run")):
    np.testing.assert_array_equal(a, b)


def test_an_export_of_a_running_run_takes_the_newest_checkpoint_when_one_rotates_away(
    digits_config, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  from lct_flax import export
  config = tiny_demo_config(digits_config.data_dir, num_train_steps=4, checkpoint_every_steps=2)
  CLASSIFICATION.train_and_evaluate(config, str(tmp_path / "run"))
  before = export.load_variables(export.export_workdir(str(tmp_path / "run"),
                                                       str(tmp_path / "before")))
  checkpoints = tmp_path / "run" / "checkpoints"
  read = ocp.CheckpointManager.restore

  def read_while_the_run_rotates(manager, step, *args, **kwargs):
    if step in (2, 4) and (checkpoints / str(step)).exists():
      # The run saves a newer checkpoint (the same state here) and drops the one being read.
      shutil.copytree(checkpoints / str(step), checkpoints / str(step + 4))
      shutil.rmtree(checkpoints / str(step))
    return read(manager, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", read_while_the_run_rotates)
  after = export.load_variables(export.export_workdir(str(tmp_path / "run"),
                                                      str(tmp_path / "after")))
  assert before.keys() == after.keys()
  for name in before:
    np.testing.assert_array_equal(before[name], after[name], err_msg=name)
  assert sorted(os.listdir(checkpoints)) == ["2", "8"]   # nothing called damaged or moved
  with pytest.raises(export.ExportError) as raised:
    export.export_workdir(str(tmp_path / "run"), str(tmp_path / "step2"), step=2)
  message = str(raised.value)
  assert "was removed while being read" in message and "[6, 8]" in message
  assert "\n" not in message and not os.path.exists(tmp_path / "step2")


@pytest.mark.parametrize("num_train_steps,eval_every_epochs,failing_step", [
    (3, 0, 3),      # the final evaluation, at the last step's checkpoint
    (46, 1, 44)])   # an epoch's evaluation between checkpoints (44 steps per epoch)
def test_an_evaluation_failure_keeps_the_training_state_of_its_step(
    digits_config, tmp_path, num_train_steps, eval_every_epochs, failing_step):
  from lct_flax import loop
  config = tiny_demo_config(digits_config.data_dir, num_train_steps=num_train_steps,
                            eval_every_epochs=eval_every_epochs, checkpoint_every_steps=1000)

  def task_with_a_corrupt_eval_image():
    def evaluate(state):
      raise OSError("jpeg::Uncompress failed. Invalid JPEG data or crop window.")
    return dataclasses.replace(CLASSIFICATION.training(config, str(tmp_path)),
                               evaluate=evaluate)

  with pytest.raises(loop.TrainingError) as raised:
    loop.run(task_with_a_corrupt_eval_image, str(tmp_path))
  message = str(raised.value)
  assert message.startswith(f"evaluation at step {failing_step} failed (OSError: jpeg::Uncompress")
  assert os.path.join("checkpoints", str(failing_step)) in message and "\n" not in message
  assert os.listdir(tmp_path / "checkpoints") == [str(failing_step)]
  assert int(CLASSIFICATION.restore_state(config, str(tmp_path)).step) == failing_step


def test_a_run_whose_steps_are_done_leaves_the_workdir_as_it_was(digits_config, tmp_path,
                                                                 caplog):
  config = tiny_demo_config(digits_config.data_dir, num_train_steps=3)
  CLASSIFICATION.train_and_evaluate(config, str(tmp_path))
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs)
  before = {path: open(path, "rb").read() for path in files}
  for steps in (3, 2):
    config = tiny_demo_config(digits_config.data_dir, num_train_steps=steps, learning_rate=0.5)
    caplog.clear()
    with caplog.at_level("INFO"):
      assert CLASSIFICATION.train_and_evaluate(config, str(tmp_path))["step"] == 3
    assert f"is already at step 3 of {steps}: nothing to train" in caplog.text
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs) == files
    assert all(open(path, "rb").read() == content for path, content in before.items())


# ---------------------------------------------------------------------------------------------
# One run per workdir; a full disk.


def error_lines(run):
  assert not any("Traceback" in line for line in run.lines), run.output[-3000:]
  return [line for line in run.lines if line.startswith("error: ")]


def test_a_second_run_on_a_held_workdir_is_refused_and_the_first_is_unaffected(
    digits_config, straight_run, tmp_path):
  stale_pid = dead_pid()
  write_lock(str(tmp_path), pid=stale_pid, process_start=None)  # the first run takes it over
  flags = tiny_flags(digits_config.data_dir, **SHARED_RUN)
  first = Run(train_command(tmp_path, flags))
  first.wait_for("Training resnet18")
  second = Run(train_command(tmp_path, flags))
  assert second.finish() != 0
  errors = error_lines(second)
  assert len(errors) == 1, second.output[-3000:]
  assert f"is in use by another training run: pid {first.proc.pid} on host" in errors[0]
  assert first.proc.poll() is None  # the refusal touched nothing of the first run
  assert first.finish() == 0, first.output[-3000:]
  assert f"Taking over the lock {tmp_path / 'train.lock'} of pid {stale_pid}" in first.output
  assert not os.path.exists(tmp_path / "train.lock")
  assert len([n for n in os.listdir(tmp_path) if n.startswith("events.out")]) == 1
  assert_same_as_straight_run(straight_run, digits_config.data_dir, tmp_path)


class SmallDisk:
  """A tmpfs of a few MiB at `path` (root only), resizable in bytes and inodes."""

  def __init__(self, path):
    self.path = str(path)
    os.makedirs(self.path)
    self._mount("size=8m")

  def _mount(self, options, remount=False):
    command = ["mount", "-o", f"remount,{options}", self.path] if remount else [
        "mount", "-t", "tmpfs", "-o", options, "tmpfs", self.path]
    subprocess.run(command, check=True, capture_output=True)

  def limit_inodes(self, count):
    self._mount(f"nr_inodes={count}", remount=True)

  def inodes_used(self):
    stats = os.statvfs(self.path)
    return stats.f_files - stats.f_ffree

  def fill(self, leave_bytes):
    """A ballast file that leaves about `leave_bytes` free."""
    free = shutil.disk_usage(self.path).free
    with open(os.path.join(self.path, "ballast"), "wb") as f:
      f.truncate(0)
      os.posix_fallocate(f.fileno(), 0, free - leave_bytes)

  def unfill(self):
    os.remove(os.path.join(self.path, "ballast"))

  def unmount(self):
    subprocess.run(["umount", self.path], check=False, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root")
  try:
    disk = SmallDisk(tmp_path / "small_disk")
  except (subprocess.CalledProcessError, FileNotFoundError) as error:
    pytest.skip(f"cannot mount a tmpfs here: {error}")
  yield disk
  disk.unmount()


def test_a_full_disk_stops_the_run_in_one_line_and_the_resume_is_exact(
    digits_config, straight_run, small_disk):
  workdir = os.path.join(small_disk.path, "run")
  checkpoints = os.path.join(workdir, "checkpoints")
  command = lambda steps: train_command(workdir, tiny_flags(
      digits_config.data_dir, **{**SHARED_RUN, "num_train_steps": steps}))
  first = Run(command(8))
  assert first.finish() == 0, first.output[-3000:]

  # Less room than the state needs: the run is refused before its first step.
  small_disk.fill(leave_bytes=600 * 1024)
  refused = Run(command(40))
  assert refused.finish() == 1
  errors = error_lines(refused)
  assert len(errors) == 1, refused.output[-3000:]
  assert (f"error: cannot write checkpoint 12 to {checkpoints} (not enough free space): "
          in errors[0]) and "KiB free there, about 1.5 MiB needed" in errors[0]
  assert "step 9/40" not in refused.output
  assert sorted(os.listdir(checkpoints)) == ["4", "8"]
  small_disk.unfill()

  # Bytes to spare but (almost) no inodes: the write itself fails with ENOSPC, mid-checkpoint.
  small_disk.limit_inodes(small_disk.inodes_used() + 8)
  failed = Run(command(40))
  assert failed.finish() == 1
  errors = error_lines(failed)
  assert len(errors) == 1, failed.output[-3000:]
  assert f"cannot write checkpoint 12 to {checkpoints} (No space left on device)" in errors[0]
  assert sorted(os.listdir(checkpoints)) == ["4", "8"]  # no temporary directory left behind

  small_disk.limit_inodes(100_000)
  resumed = Run(command(40))
  assert resumed.finish() == 0, resumed.output[-3000:]
  assert f"Resumed from {checkpoints}/8" in resumed.output
  assert_same_as_straight_run(straight_run, digits_config.data_dir, workdir)


def test_an_export_that_cannot_be_written_leaves_nothing_behind(tiny_demo_run, tmp_path):
  """A real write error without root: a file-size limit (RLIMIT_FSIZE, EFBIG) below the size of
  the exported arrays."""
  abandoned = tmp_path / f".digits.tmp-{dead_pid()}@{socket.gethostname()}.abc"
  abandoned.mkdir()  # an earlier export killed mid-write

  limited = ("import resource, runpy, sys; "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024)); "
             "sys.argv[0] = 'lct_flax/export.py'; "
             "runpy.run_module('lct_flax.export', run_name='__main__', alter_sys=True)")
  proc = subprocess.run(  # Python ignores SIGXFSZ, so the write fails with EFBIG
      [sys.executable, "-c", limited, f"--workdir={tiny_demo_run.workdir}",
       f"--output={tmp_path / 'digits'}"], cwd=REPO, env=child_environment(), text=True,
      capture_output=True, timeout=300)
  lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()
           and not l.startswith(("I1", "W1"))]
  assert proc.returncode == 1 and len(lines) == 1, lines
  assert lines[0].startswith(f"error: cannot write export digits to {tmp_path} (File too large)")
  assert "Nothing was exported" in lines[0] and "needed" in lines[0]
  assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Bad input: each refused with one line naming the problem, a non-zero exit, no traceback.


@pytest.fixture(scope="module")
def refusals(_prepared_digits, tiny_demo_export, tmp_path_factory):
  """Runs every bad-input command at once (they fail before any compile) and collects them."""
  base = tmp_path_factory.mktemp("refusals")
  data = _prepared_digits.data_dir
  damaged = str(base / "damaged_export")
  shutil.copytree(tiny_demo_export, damaged)
  with open(os.path.join(damaged, "variables.npz"), "r+b") as f:
    f.truncate(100)
  evaluate = [sys.executable, "-m", "lct_flax.evaluate"]
  cases = {
      "unknown model": (train_command(base / "a", tiny_flags(data, model__name="resnet20")),
                        "config.model.name='resnet20' is not allowed: it must be one of", None),
      "unknown attention": (train_command(base / "b", tiny_flags(data, model__attention="cbam")),
                            "config.model.attention='cbam' is not allowed", None),
      "unknown dataset": (train_command(base / "c", tiny_flags(
          data, dataset__name="nosuchdataset")), "unknown dataset 'nosuchdataset'", None),
      "unknown config key": (train_command(base / "d", tiny_flags(data, foo=1)),
                             "the config has no key 'foo'", None),
      "groups do not divide": (train_command(base / "e", tiny_flags(
          data, model__attention_kwargs__groups=3)), "3 groups do not divide 8 channels",
                               None),
      "one channel per group": (train_command(base / "f", tiny_flags(
          data, model__attention_kwargs__groups=8)),
                                "8 channels in 8 groups leave 1 channel per group", None),
      "batch not divisible": (train_command(base / "g", tiny_flags(data, batch_size=33)),
                              "batch_size 33 is not divisible by the 2 devices",
                              {"devices": 2}),
      "missing imagenet tars": (train_command(base / "h", [
          f"--config.dataset.data_dir={base / 'empty'}"], config="configs/lct_resnet50.py"),
                                "ILSVRC2012_img_train.tar", None),
      "empty split": (train_command(base / "i", tiny_flags(
          data, dataset__train_split="train[:0]")), "train[:0]", None),
      "missing export": (evaluate + [f"--export={base / 'no_export'}"], "no_export", None),
      "damaged export": (evaluate + [f"--export={damaged}"], "variables.npz", None),
      "unwritable evaluation output": (
          evaluate + [f"--export={tiny_demo_export}", "--output=/etc/passwd/result.json"],
          "cannot write the evaluation results in /etc/passwd", None),
      "workdir not writable": (train_command("/etc/passwd/run", tiny_flags(data)),
                               "workdir /etc/passwd/run is not writable", None),
      "missing config file": (train_command(base / "j", [], config="configs/nope.py"),
                              "config file 'configs/nope.py' does not exist", None),
      "bad config argument": (train_command(base / "k", [], config="configs/lct_resnet50.py:g"),
                              "config argument 'g' is neither a block", None),
  }
  procs = {name: subprocess.Popen(cmd, cwd=REPO, env=child_environment(**(env or {})), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for name, (cmd, _, env) in cases.items()}
  _STARTED.extend(procs.values())
  results = {}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=600)
    lines = [l for l in (out + err).splitlines() if l.strip() and not l.startswith(("I1", "W1"))]
    results[name] = (proc.returncode, lines, cases[name][1], out + err)
  return results


@pytest.mark.parametrize("case", [
    "unknown model", "unknown attention", "unknown dataset", "unknown config key",
    "groups do not divide", "one channel per group", "batch not divisible",
    "missing imagenet tars", "empty split", "missing export", "damaged export",
    "unwritable evaluation output", "workdir not writable", "missing config file",
    "bad config argument"])
def test_bad_input_is_refused_with_one_clear_line(refusals, case):
  code, lines, expected, _ = refusals[case]
  assert code != 0
  assert not any("Traceback" in line for line in lines), "\n".join(lines)
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == 1, "\n".join(lines)
  assert expected in errors[0]
  if case == "missing imagenet tars":
    assert "ILSVRC2012_img_val.tar" in errors[0] and "empty" in errors[0]


def test_no_tensorflow_banners_on_the_console(refusals):
  # "unknown dataset", "empty split" and "missing imagenet tars" import TensorFlow.
  for name, (_, _, _, output) in refusals.items():
    assert not any(banner in output for banner in BANNERS), (name, output[-2000:])


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(digits_config, tmp_path):
  from test_trainer import WORKER, free_port
  from tiny import tiny_overrides
  overrides = tiny_overrides(digits_config.data_dir, batch_size=16, num_train_steps=100_000,
                             log_every_steps=1)
  address = f"127.0.0.1:{free_port()}"
  runs = [Run([sys.executable, WORKER, "--devices=2", f"--workdir={tmp_path}",
               f"--config_json={json.dumps(overrides)}", f"--coordinator_address={address}",
               "--num_processes=2", f"--process_id={i}"]) for i in range(2)]
  runs[0].wait_for("step 3/100000")
  runs[0].proc.send_signal(signal.SIGTERM)
  assert [run.finish() for run in runs] == [0, 0], runs[0].output[-2000:] + runs[1].output[-2000:]
  stopped = [[line.split("Stopped at step ")[1].split()[0] for line in run.lines
              if "Stopped at step" in line] for run in runs]
  assert len(stopped[0]) == 1 and stopped[0] == stopped[1]
  assert os.listdir(tmp_path / "checkpoints") == stopped[0]
