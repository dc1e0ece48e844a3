"""bench/accelerator_check.py, the check to run first on a GPU or TPU machine, in its dry mode:
the real train steps of a shrunk LCT ResNet-50 and Faster R-CNN on synthetic batches of the
plan's shapes, timed on this CPU and printed beside the plan's H100 figures; without an
accelerator and without --dry, one line saying what to do."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "accelerator_check.py")


def run(*flags):
  return subprocess.run([sys.executable, SCRIPT, *flags], cwd=REPO, capture_output=True,
                        text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_the_dry_run_trains_each_kind_of_row_and_prints_the_plan_beside_it():
  result = run("--dry", "--rows=lct_resnet50,faster_rcnn", "--steps=1", "--target=h100")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0] == "cpu (cpu), dry run"
  rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ")
          for line in lines if line.startswith("| ") and "---" not in line}
  assert set(rows) == {"row", "lct_resnet50", "faster_rcnn_r101_fpn_1x"}
  plan = json.load(open(os.path.join(REPO, "bench", "plan_results.json")))["lct_resnet50/h100"]
  _, batch, step_ms, plan_ms, rate, plan_rate, peak, plan_peak, compile_s = rows[
      "lct_resnet50"]
  assert batch == "2" and float(step_ms) > 0 and float(compile_s) > 0
  shown_rate = float(rate.replace(",", ""))   # from the unrounded step time
  assert abs(shown_rate - 2e3 / float(step_ms)) <= 0.01 * shown_rate + 1
  assert plan_ms == f"{plan['est_step_seconds'] * 1e3:.1f}"
  assert plan_rate == f"{plan['per_device_batch'] / plan['est_step_seconds']:,.0f}"
  assert plan_peak == f"{plan['peak_bytes_per_device'] / 2**30:.2f}"
  assert peak == "-"   # a CPU keeps no memory statistics
  detector = rows["faster_rcnn_r101_fpn_1x"]
  assert detector[1] == "2" and float(detector[2]) > 0


def test_without_an_accelerator_it_asks_for_the_dry_run():
  result = run("--rows=lct_resnet50")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: no GPU or TPU here;")
  assert "--dry" in result.stderr and result.stdout == ""
