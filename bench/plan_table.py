"""Runs `python -m lct_flax.plan --json` over the paper's configs and targets and prints the table
of the README's "Before you rent hardware" and bench/RESULTS.md: fits, peak GiB per device,
estimated images/s, and LCT's ratios to the plain ResNet on each target.

Every row is one plan process whose JSON is kept in `--results` (default
bench/plan_results.json) as soon as it ends, so an interrupted run resumes where it stopped (a
TPU compile of ResNet-50 takes minutes on a 2-core CPU). Rows: Table 1's configs in bfloat16 at
the paper's global batch on each of `--targets`; Table 6/7's detectors at mmdetection's
model-zoo setting of 2 images per device. `--rows=CONFIG_SUBSTRING` keeps the matching rows.

  python bench/plan_table.py [--targets=h100,v5e,v4] [--rows=resnet50] [--detection]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from lct_flax import accelerators

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE1 = ("resnet50", "se_resnet50", "lct_resnet50", "resnet101", "se_resnet101",
          "lct_resnet101")
DETECTORS = ("faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn")
# mmdetection v1.0's model zoo, memory per GPU at 2 images (GB, PyTorch float32), R-101-FPN 1x.
MMDET_MEMORY_GB = {"faster_rcnn": 8.0, "mask_rcnn": 9.1, "cascade_rcnn": 8.7,
                   "cascade_mask_rcnn": 10.9}


def rows(targets, detection):
  """(key, config path, flags) of every row."""
  for target in targets:
    for name in TABLE1:
      yield (f"{name}/{target}", f"configs/{name}.py",
             [f"--target={target}", "--config.half_precision=True"])
    if detection:
      for attention in ("", "se_", "lct_"):
        for detector in DETECTORS:
          name = f"{attention}{detector}_r101_fpn_1x"
          images = 2 * accelerators.get(target).per_host
          yield (f"{name}/{target}", f"configs/detection/{name}.py",
                 [f"--target={target}", f"--config.batch_size={images}"])


def run_row(config, flags):
  result = subprocess.run([sys.executable, "-m", "lct_flax.plan", f"--config={config}", "--json",
                           *flags], cwd=REPO, capture_output=True, text=True)
  if result.returncode not in (0, 3):
    return {"error": (result.stderr.strip().splitlines() or ["?"])[-1]}
  return json.loads(result.stdout)


def table(results):
  lines = ["| config | target | fits | peak GiB / device | est. images/s | vs plain: peak | "
           "vs plain: HBM bytes | vs plain: kernels | vs plain: step | mmdet v1 GB | compile s |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for key, plan in results.items():
    name, target = key.split("/")
    if "error" in plan:
      lines.append(f"| {name} | {target} | error: {plan['error']} | | | | | | | | |")
      continue
    plain = results.get(f"{name.removeprefix('lct_').removeprefix('se_')}/{target}", {})
    ratio = lambda field: (f"{plan[field] / plain[field]:.3f}"
                           if plain.get(field) and plan.get(field) and plain is not plan else "")
    images = plan.get("est_images_per_second")
    detector = name.removeprefix("lct_").removeprefix("se_").removesuffix("_r101_fpn_1x")
    lines.append(
        f"| {name} | {target} | {'yes' if plan['fits'] else 'no'} | "
        f"{plan['peak_bytes_per_device'] / 2**30:.2f} | "
        f"{'' if images is None else f'{images:,.0f}'} | {ratio('peak_bytes_per_device')} | "
        f"{ratio('bytes_per_device')} | {ratio('kernels')} | {ratio('est_step_seconds')} | "
        f"{MMDET_MEMORY_GB.get(detector, '')} | {plan.get('compile_seconds') or 0:.0f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--targets", default="h100,v5e,v4")
  parser.add_argument("--rows", default="")
  parser.add_argument("--detection", action="store_true")
  parser.add_argument("--results", default=os.path.join(REPO, "bench", "plan_results.json"))
  args = parser.parse_args()
  results = json.load(open(args.results)) if os.path.exists(args.results) else {}
  for key, config, flags in rows(args.targets.split(","), args.detection):
    if args.rows not in key or key in results:
      continue
    print(f"compiling {key} ...", file=sys.stderr, flush=True)
    results[key] = run_row(config, flags)
    with open(args.results + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(args.results + ".tmp", args.results)
  print(table({k: v for k, v in results.items() if args.rows in k}))


if __name__ == "__main__":
  main()
