"""`python -m lct_flax.plan` for an absent 8 x H100 host: a tiny classifier's and a tiny detector's
real train and eval steps compiled deviceless through the command itself, the report's figures
against each other and an independent FLOP count, and no image gathered onto every GPU. Skipped
without the compile-only packages (requirements-plan.txt; scripts/test.sh installs them)."""

import json

import pytest

from configs import demo
from lct_flax import accelerators
from lct_flax import flops
from lct_flax import model_specs
from plan_commands import (CLASSIFIER, CLASSIFIER_IMAGE_SIZE, CLASSIFIER_WIDTH, DETECTOR,
                           assert_consistent, finished, needs_compilers, start)


def classifier_counts():
  """Parameters and multiply-adds of the model CLASSIFIER compiles (the digits' 10 classes)."""
  config = demo.get_config()
  config.model.width = CLASSIFIER_WIDTH
  model = model_specs.ClassifierSpec.from_config(config, 10).module()
  return flops.count(model, (1, CLASSIFIER_IMAGE_SIZE, CLASSIFIER_IMAGE_SIZE, 3))


@needs_compilers
def test_a_tiny_classifier_on_an_h100_host_against_an_independent_flop_count():
  code, out, err = finished(start(*CLASSIFIER, "--target=h100", "--json"))
  assert code == 0, err
  plan = json.loads(out)
  assert (plan["task"], plan["devices"], plan["per_device_batch"]) == ("classification", 8, 1)
  assert_consistent(plan, accelerators.get("h100"))
  assert plan["usable_bytes"] == int(0.75 * plan["device_memory_bytes"])
  assert plan["rematerialized"] is None   # the GPU compiler does not rematerialise
  assert plan["flops_per_example"] == pytest.approx(plan["unoptimised_flops_per_example"])
  counts = classifier_counts()
  # A training step is about three forward passes: XLA's count of the unoptimised step within
  # a few % of 3 x 2 x the convolutions' and linear layers' multiply-adds.
  assert plan["unoptimised_flops_per_example"] == pytest.approx(6 * counts.conv_linear_macs,
                                                                rel=0.05)
  assert plan["collectives"]["all-reduce"]["bytes"] >= 4 * counts.params   # float32 gradients
  assert plan["input_cores_per_host"] == pytest.approx(
      plan["est_images_per_second"] * 2.38 / 1000, rel=1e-9)


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
