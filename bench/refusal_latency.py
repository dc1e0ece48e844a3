"""How long the command-line tools take to refuse a bad command (wall and CPU seconds).

Each case is a real command that must end in one `error:` line: unknown config key, bad config
value, missing config file, unwritable workdir, missing export, missing workdir. They run one at a
time, `--repeats` times, alternated with the same commands in `--baseline` (another checkout, e.g.
the main branch before this change) when given, so that load from other jobs hits both alike.
CPU seconds (the child's user + system time) hardly depend on that load; wall seconds do.

Prints a markdown section for bench/RESULTS.md:

  python -m bench.refusal_latency [--repeats=5] [--baseline=/path/to/other/checkout]
"""

import datetime
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_REPEATS = flags.DEFINE_integer("repeats", 5, "Runs of each command (the median is reported).")
_BASELINE = flags.DEFINE_string("baseline", None, "Another checkout to time the same commands in.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cases(scratch):
  train = ["train.py", "--config=configs/demo.py", f"--workdir={scratch}/run"]
  missing = os.path.join(scratch, "missing")
  return {
      "train.py: unknown config key": train + ["--config.foo=1"],
      "train.py: bad value (--config.batch_size=0)": train + ["--config.batch_size=0"],
      "train.py: missing config file": ["train.py", "--config=configs/nope.py",
                                        f"--workdir={scratch}/run"],
      "train.py: workdir not writable": ["train.py", "--config=configs/demo.py",
                                         "--workdir=/proc/run"],
      "evaluate: missing export": ["-m", "lct_flax.evaluate", f"--export={missing}"],
      "export: missing workdir": ["-m", "lct_flax.export", f"--workdir={missing}",
                                  f"--output={scratch}/export"],
      "analysis: missing export": ["-m", "lct_flax.analysis", f"--export={missing}",
                                   f"--output={scratch}/analysis"],
  }


def run_once(repo, args):
  """(wall s, CPU s, the output's lines) of `python ARGS` in `repo`."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, *args], cwd=repo, capture_output=True, text=True)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
  return wall, cpu, lines


def main(argv):
  del argv
  repos = {"this checkout": REPO}
  if _BASELINE.value:
    repos = {"baseline": os.path.abspath(_BASELINE.value), **repos}
  with tempfile.TemporaryDirectory() as scratch:
    timings = {(name, label): [] for name in cases(scratch) for label in repos}
    outputs = {}
    load = os.getloadavg()[0]
    for _ in range(_REPEATS.value):
      for name, args in cases(scratch).items():
        for label, repo in repos.items():
          wall, cpu, lines = run_once(repo, args)
          timings[name, label].append((wall, cpu))
          outputs[name, label] = lines
  print(f"## Refusal latency, {datetime.date.today()}\n")
  print(f"CPU: {os.cpu_count()} cores; load average {load:.1f} when timing started. Command: "
        f"`python -m bench.refusal_latency --repeats={_REPEATS.value}"
        f"{' --baseline=' + _BASELINE.value if _BASELINE.value else ''}`. Median of "
        f"{_REPEATS.value} runs each (min in brackets); CPU = the command's user + system "
        f"seconds.\n")
  print("| command | checkout | wall s | CPU s | output |")
  print("|---|---|---:|---:|---|")
  for (name, label), runs in timings.items():
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    lines = outputs[name, label]
    shape = ("one `error:` line" if len(lines) == 1 and lines[0].startswith("error: ") else
             f"{len(lines)} lines, last: `{lines[-1][:60] if lines else ''}`")
    print(f"| {name} | {label} | {statistics.median(walls):.2f} ({min(walls):.2f}) | "
          f"{statistics.median(cpus):.2f} ({min(cpus):.2f}) | {shape} |")


if __name__ == "__main__":
  app.run(main)
