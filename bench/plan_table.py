"""Runs `python -m lct_flax.plan --json` over the paper's configs and targets and prints the table
of the README's "Before you rent hardware" and bench/RESULTS.md: fits, peak GiB per device,
estimated images/s, and LCT's ratios to the plain ResNet on each target.

Every row is one plan process whose JSON is kept in `--results` (default
bench/plan_results.json) as soon as it ends, so an interrupted run resumes where it stopped (a
TPU compile of ResNet-50 takes minutes on a 2-core CPU); a row that ended in an error runs again.
Rows: Table 1's configs in bfloat16 at the paper's global batch on each of `--targets`
(ResNet-101's 220 rounded up to a multiple of the devices: 224 on 8); with `--detection`, Table
6/7's detectors at mmdetection's model-zoo setting of 2 images per device, in float32 as
mmdetection's memory column was measured, with `--scaling` (per-device work against one
device's): every one on GPUs, one per detector type on TPUs; on GPUs the plain detectors in
bfloat16 too (rows named "... bf16"). `--rows=CONFIG_SUBSTRING` keeps the matching rows;
`--table` prints the kept results without compiling (rows not compiled yet say so).

  python bench/plan_table.py [--targets=h100,v5e,v4] [--rows=resnet50] [--detection] [--table]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lct_flax import accelerators  # noqa: E402

TABLE1 = ("resnet50", "se_resnet50", "lct_resnet50", "resnet101", "se_resnet101",
          "lct_resnet101")
DETECTORS = ("faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn")
# mmdetection v1.0's model zoo, memory per GPU at 2 images (GB, PyTorch float32), R-101-FPN 1x.
MMDET_MEMORY_GB = {"faster_rcnn": 8.0, "mask_rcnn": 9.1, "cascade_rcnn": 8.7,
                   "cascade_mask_rcnn": 10.9}


def rows(targets, detection):
  """(key, config path, flags) of every row; a bfloat16 detection row's name ends in " bf16"."""
  for target in targets:
    accelerator = accelerators.get(target)
    devices, tpu = accelerator.per_host, accelerator.kind == accelerators.TPU
    for name in TABLE1:
      paper_batch = importlib.import_module(f"configs.{name}").get_config().batch_size
      batch = -(-paper_batch // devices) * devices
      yield (f"{name}/{target}", f"configs/{name}.py",
             [f"--target={target}", "--config.half_precision=True",
              f"--config.batch_size={batch}"])
    if detection:
      for attention in ("",) if tpu else ("", "se_", "lct_"):
        for detector in DETECTORS:
          name = f"{attention}{detector}_r101_fpn_1x"
          flags = [f"--target={target}", f"--config.batch_size={2 * devices}", "--scaling"]
          yield f"{name}/{target}", f"configs/detection/{name}.py", flags
          if not attention and not tpu:
            yield (f"{name} bf16/{target}", f"configs/detection/{name}.py",
                   [*flags, "--config.half_precision=True"])


def run_row(config, flags):
  result = subprocess.run([sys.executable, "-m", "lct_flax.plan", f"--config={config}", "--json",
                           *flags], cwd=REPO, capture_output=True, text=True)
  if result.returncode not in (0, 3):
    return {"error": (result.stderr.strip().splitlines() or ["?"])[-1]}
  return json.loads(result.stdout)


NOT_COMPILED = {"error": "not compiled yet"}


def table(results):
  lines = ["| config | target | batch / device | fits | peak GiB / device | est. images/s | "
           "vs plain: peak | vs plain: HBM bytes | vs plain: kernels | vs plain: step | "
           "vs one device: bytes | mmdet v1 GB | compile s |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for key, plan in results.items():
    name, target = key.split("/")
    if "error" in plan:
      lines.append(f"| {name} | {target} | | {plan['error']} |" + " |" * 9)
      continue
    plain = results.get(f"{name.removeprefix('lct_').removeprefix('se_')}/{target}", {})
    ratio = lambda field: (f"{plan[field] / plain[field]:.3f}"
                           if plain.get(field) and plan.get(field) and plain is not plan else "")
    images = plan.get("est_images_per_second")
    one_device = plan.get("one_device_bytes")
    scaling = f"{plan['bytes_per_device'] / one_device:.3f}" if one_device else ""
    detector = (name.removesuffix(" bf16").removeprefix("lct_").removeprefix("se_")
                .removesuffix("_r101_fpn_1x"))
    lines.append(
        f"| {name} | {target} | {plan['per_device_batch']} | {'yes' if plan['fits'] else 'no'} | "
        f"{plan['peak_bytes_per_device'] / 2**30:.2f} | "
        f"{'' if images is None else f'{images:,.0f}'} | {ratio('peak_bytes_per_device')} | "
        f"{ratio('bytes_per_device')} | {ratio('kernels')} | {ratio('est_step_seconds')} | "
        f"{scaling} | {MMDET_MEMORY_GB.get(detector, '')} | "
        f"{plan.get('compile_seconds') or 0:.0f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--targets", default="h100,v5e,v4")
  parser.add_argument("--rows", default="")
  parser.add_argument("--detection", action="store_true")
  parser.add_argument("--results", default=os.path.join(REPO, "bench", "plan_results.json"))
  parser.add_argument("--table", action="store_true", help="print the kept results only")
  args = parser.parse_args()
  results = json.load(open(args.results)) if os.path.exists(args.results) else {}
  chosen = [row for row in rows(args.targets.split(","), args.detection) if args.rows in row[0]]
  for key, config, flags in [] if args.table else chosen:
    if "error" not in results.get(key, {"error": "not run"}):
      continue
    print(f"compiling {key} ...", file=sys.stderr, flush=True)
    results[key] = run_row(config, flags)
    with open(args.results + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(args.results + ".tmp", args.results)
  print(table({key: results.get(key, NOT_COMPILED) for key, _, _ in chosen}))


if __name__ == "__main__":
  main()
