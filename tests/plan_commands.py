"""The `python -m lct_flax.plan` commands the plan tests run (tiny classifier and detector flags),
and the checks every compiled plan must pass; split by target over two test files so that the
two test workers compile them side by side."""

import os
import subprocess
import sys

import pytest

from child_env import child_environment
from lct_flax import plan

REPO = plan.REPO
# Where the plan looks for the compilers (LCT_PLAN_PACKAGES, which the started plans inherit).
needs_compilers = pytest.mark.skipif(
    not os.path.isdir(os.path.join(plan.PACKAGES, "libtpu")),
    reason="the deviceless compilers are not installed: bash scripts/setup.sh --plan")

# ResNet-18 (LCT) at width 1/4 on 128 px images, 1 per device: its convolutions are most of its
# work, and little of them falls on padding, so XLA's FLOP count is close to the layer count.
CLASSIFIER_WIDTH, CLASSIFIER_IMAGE_SIZE = 0.25, 128
CLASSIFIER = ["--config=configs/demo.py", f"--config.model.width={CLASSIFIER_WIDTH}",
              f"--config.dataset.image_size={CLASSIFIER_IMAGE_SIZE}",
              f"--config.dataset.resize_size={CLASSIFIER_IMAGE_SIZE}", "--config.batch_size=8"]
# The same on 64 px images: the TPU compiler takes half the time (62 -> 31 CPU s here); a 2x2
# last stage puts 5% of the windows on padding, which XLA does not count.
SMALL_IMAGES = ["--config.dataset.image_size=64", "--config.dataset.resize_size=64"]
DETECTOR = ["--config=configs/detection/shapes_demo.py", "--config.model.width=0.125",
            "--config.model.fpn_channels=16", "--config.model.fc_hidden=32",
            "--config.model.rpn_proposals_train=64", "--config.model.rpn_proposals_test=32",
            "--config.model.rcnn_samples=32", "--config.model.max_candidates=64",
            "--config.dataset.img_scale=(80,64)", "--config.dataset.canvases=((64,96),(96,64))",
            "--config.batch_size=16"]


def plan_command(*flags):
  return [sys.executable, "-m", "lct_flax.plan", *flags]


def finished(process):
  out, err = process.communicate(timeout=900)
  return process.returncode, out, err


def start(*flags, **env):
  return subprocess.Popen(plan_command(*flags), cwd=REPO, env=child_environment(**env), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_consistent(plan, target):
  assert plan["state_bytes_per_device"] <= plan["argument_bytes_per_device"]
  assert plan["argument_bytes_per_device"] <= plan["peak_bytes_per_device"]
  assert plan["device_memory_bytes"] == target.memory_bytes and plan["fits"]
  step = max(plan["flops_per_example"] * plan["per_device_batch"] / target.peak_flops,
             plan["bytes_per_device"] / target.hbm_bytes_per_second)
  assert plan["est_step_seconds"] == pytest.approx(step, rel=1e-9)
  assert plan["est_images_per_second"] == pytest.approx(plan["global_batch"] / step, rel=1e-9)
  assert plan["collectives"]["all-reduce"]["count"] >= 1 and plan["kernels"] > 50
