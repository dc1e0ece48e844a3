"""bench/plan_table.py's rows: the paper's batches split over each target's host, the detectors at
2 images per device with the scaling check, and the table it prints from kept results."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import plan_table  # noqa: E402


def flags_of(rows):
  return {key: flags for key, _, flags in rows}


def test_resnet101s_batch_is_rounded_up_to_the_devices_and_the_detectors_run_two_per_device():
  rows = flags_of(plan_table.rows(["h100", "v4"], detection=True))
  assert "--config.batch_size=256" in rows["lct_resnet50/h100"]
  assert "--config.batch_size=224" in rows["lct_resnet101/h100"]   # 220 over 8 GPUs
  assert "--config.batch_size=220" in rows["lct_resnet101/v4"]     # 220 over 4 chips
  assert rows["lct_mask_rcnn_r101_fpn_1x/h100"] == ["--target=h100", "--config.batch_size=16",
                                                    "--scaling"]
  assert rows["mask_rcnn_r101_fpn_1x bf16/h100"][-1] == "--config.half_precision=True"
  tpu_detectors = [key for key in rows if key.endswith("/v4") and "rcnn" in key]
  assert sorted(tpu_detectors) == [f"{d}_r101_fpn_1x/v4" for d in sorted(plan_table.DETECTORS)]
  assert rows["faster_rcnn_r101_fpn_1x/v4"] == ["--target=v4", "--config.batch_size=8",
                                                "--scaling"]


def test_the_table_gives_ratios_to_plain_and_the_detectors_beside_mmdetection():
  plan = dict(per_device_batch=2, fits=True, peak_bytes_per_device=2**30,
              est_images_per_second=100.0, bytes_per_device=10.0, kernels=100,
              est_step_seconds=1.0, one_device_bytes=8.0, compile_seconds=5.0)
  lct = {**plan, "peak_bytes_per_device": 2**31, "kernels": 110}
  table = plan_table.table({"mask_rcnn_r101_fpn_1x/h100": plan,
                            "lct_mask_rcnn_r101_fpn_1x/h100": lct,
                            "cascade_rcnn_r101_fpn_1x/v4": {"error": "error: no room"}})
  lines = table.splitlines()
  assert lines[2] == ("| mask_rcnn_r101_fpn_1x | h100 | 2 | yes | 1.00 | 100 |  |  |  |  | "
                      "1.250 | 9.1 | 5 |")
  assert lines[3] == ("| lct_mask_rcnn_r101_fpn_1x | h100 | 2 | yes | 2.00 | 100 | 2.000 | "
                      "1.000 | 1.100 | 1.000 | 1.250 | 9.1 | 5 |")
  assert lines[4].startswith("| cascade_rcnn_r101_fpn_1x | v4 | | error: no room |")


def test_the_table_alone_compiles_nothing_and_names_the_rows_not_compiled_yet(tmp_path):
  kept = tmp_path / "results.json"
  kept.write_text(json.dumps({"resnet50/v5e": dict(
      per_device_batch=32, fits=True, peak_bytes_per_device=2**31, est_images_per_second=9000.0,
      bytes_per_device=1.0, kernels=10, est_step_seconds=1.0, compile_seconds=200.0)}))
  before = kept.read_text()
  result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "plan_table.py"),
                           "--targets=v5e", "--rows=resnet50", "--table", f"--results={kept}"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "compiling" not in result.stderr and kept.read_text() == before
  lines = result.stdout.splitlines()
  assert lines[2] == "| resnet50 | v5e | 32 | yes | 2.00 | 9,000 |  |  |  |  |  |  | 200 |"
  assert lines[3].startswith("| se_resnet50 | v5e | | not compiled yet |")
  assert lines[4].startswith("| lct_resnet50 | v5e | | not compiled yet |") and len(lines) == 5
