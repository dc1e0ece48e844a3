"""`python -m lct_flax.plan` for an absent 8 x H100 host: a tiny classifier's and a tiny detector's
real train and eval steps compiled deviceless through the command itself, the report's figures
against each other, and no image gathered onto every GPU. Skipped without the compile-only
packages (requirements-plan.txt; scripts/test.sh installs them)."""

import json

import pytest

from lct_flax import accelerators
from plan_commands import (CLASSIFIER, DETECTOR, SMALL_IMAGES, assert_consistent, finished,
                           needs_compilers, start)


@needs_compilers
def test_a_tiny_classifier_on_an_h100_host():
  code, out, err = finished(start(*CLASSIFIER, *SMALL_IMAGES, "--target=h100", "--json"))
  assert code == 0, err
  plan = json.loads(out)
  assert_consistent(plan, accelerators.get("h100"))
  assert plan["usable_bytes"] == int(0.75 * plan["device_memory_bytes"])
  assert plan["rematerialized"] is None   # the GPU compiler does not rematerialise
  assert plan["flops_per_example"] == pytest.approx(plan["unoptimised_flops_per_example"])


@needs_compilers
def test_a_tiny_detector_on_an_h100_host_gathers_no_image_onto_every_gpu():
  """No collective but the gradients' and BatchNorm's all-reduces: each GPU ranks only its own
  images' anchors (a `top_k` of a whole FPN level was all-gathered onto every GPU)."""
  code, out, err = finished(start(*DETECTOR, "--target=h100", "--json"))
  assert code == 0, err
  plan = json.loads(out)
  assert (plan["task"], plan["devices"], plan["per_device_batch"]) == ("detection", 8, 2)
  assert_consistent(plan, accelerators.get("h100"))
  assert set(plan["collectives"]) == {"all-reduce"}
