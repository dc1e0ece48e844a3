"""`python -m lct_flax.plan` for an absent v5e-8: a tiny classifier's and a tiny detector's real
train and eval steps compiled deviceless through the command itself, whose chips each do one
chip's work; the report's figures against each other; an absurd batch refused with one that
fits; two TPU compiles at once (libtpu's lock); bad commands refused in one line before any
compile. Skipped without the compile-only packages (requirements-plan.txt;
scripts/test.sh installs them)."""

import json
import subprocess

import pytest

from child_env import child_environment
from lct_flax import accelerators
from plan_commands import (CLASSIFIER, DETECTOR, REPO, SMALL_IMAGES, assert_consistent, finished,
                           needs_compilers, plan_command, start)


@needs_compilers
def test_a_tiny_classifier_on_a_v5e_host_and_an_absurd_batch_compiled_at_once():
  fitting = start(*CLASSIFIER, *SMALL_IMAGES, "--target=v5e", "--json")
  absurd = start(*CLASSIFIER, "--target=v5e", "--json", "--config.batch_size=32768")
  code, out, err = finished(fitting)
  assert code == 0, err
  plan = json.loads(out)
  assert (plan["task"], plan["devices"], plan["per_device_batch"]) == ("classification", 8, 1)
  assert_consistent(plan, accelerators.get("v5e"))
  assert plan["flops_per_example"] >= 0.95 * plan["unoptimised_flops_per_example"]
  assert plan["rematerialized"] is False

  code, out, err = finished(absurd)
  assert code == 3
  refused = json.loads(out)
  assert not refused["fits"] and refused["per_device_batch"] == 4096
  largest = refused["largest_fitting_batch_per_device"]
  assert 1 <= largest < 4096
  assert refused["peak_bytes_per_device"] > refused["usable_bytes"]
  assert err.strip().splitlines()[-1].startswith("error: the step needs ")
  assert err.strip().endswith(f"--config.batch_size={largest * 8}.")


@needs_compilers
def test_a_tiny_detector_on_a_v5e_host_divides_its_work_over_the_chips():
  """Each chip of eight pools only its own two images' RoIs: its FLOPs and bytes are one chip's
  at two images (the RoIs of a global list pooled on every chip were 11% more bytes here, and
  all-gathered)."""
  code, out, err = finished(start(*DETECTOR, "--target=v5e", "--scaling"))
  assert code == 0, err
  lines = out.splitlines()
  assert lines[0].startswith("configs/detection/shapes_demo.py (detection, float32) on 8 x v5e: "
                             "global batch 16, 2 per device")
  assert "fits" in lines[2] and "all-reduce" in out and "input pipeline" not in out
  assert "all-gather" not in out
  assert lines[-2].startswith("  data parallelism: per device ") and lines[-2].endswith(
      "of one device at 2 per device: divides the work"), lines[-2]


@pytest.mark.parametrize("flags,message", [
    (["--target=tpu9"], "unknown --target 'tpu9'; choose one of h100, h200, a100, v4, v5e"),
    (["--target=h100", "--devices=12"], "a h100 host has 8 devices; choose a multiple of 8"),
    (["--target=v5e", "--devices=24"], "no v5e slice of that size here; choose one of [8, 16"),
    (["--target=v4", "--config.model.width=-1"], "config.model.width=-1"),
])
def test_bad_commands_are_refused_in_one_line_before_any_compile(flags, message):
  # Without the compilers at hand, a command that got as far as compiling would say so instead.
  result = subprocess.run(plan_command("--config=configs/demo.py", *flags), cwd=REPO,
                          env=child_environment(LCT_PLAN_PACKAGES="/nonexistent"), text=True,
                          capture_output=True)
  assert result.returncode in (1, 2)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_without_the_compilers_the_plan_says_how_to_install_them():
  result = subprocess.run(plan_command(*CLASSIFIER, "--target=v5e"), cwd=REPO,
                          env=child_environment(LCT_PLAN_PACKAGES="/nonexistent"), text=True,
                          capture_output=True)
  assert result.returncode == 1
  assert result.stderr.strip() == (
      "error: the deviceless GPU and TPU compilers are not installed in /nonexistent; run "
      "`bash scripts/setup.sh --plan` (requirements-plan.txt, about 1.3 GB).")
