"""Table 1's FLOPs column and Table 6's ΔParams / ΔFLOPs, counted from the models' own layer shapes
in the ptflops convention."""

import subprocess
import sys

import pytest

from lct_flax import flops
from lct_flax import models


@pytest.fixture(scope="module")
def table1():
  return {(name, att): counts for name, att, counts, _, _ in flops.table1_rows()}


@pytest.mark.parametrize("key,expected", list(flops.PAPER_TABLE1.items()))
def test_table1_flops_within_half_a_percent(table1, key, expected):
  gflops = table1[key].ptflops_macs / 1e9
  assert abs(gflops - expected[1]) / expected[1] < 0.005


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_lct_adds_fewer_flops_and_parameters_than_se(table1, name):
  base, se, lct = table1[(name, None)], table1[(name, "se")], table1[(name, "lct")]
  assert base.ptflops_macs < lct.ptflops_macs < se.ptflops_macs
  assert base.params < lct.params < se.params
  # LCT's transform is element-wise: it adds no convolution or linear multiply-adds.
  assert lct.conv_linear_macs == base.conv_linear_macs < se.conv_linear_macs


def test_resnet50_convolution_macs_are_the_known_4_09g(table1):
  assert abs(table1[("resnet50", None)].conv_linear_macs / 1e9 - 4.089) < 0.001


def test_count_scales_with_input_size():
  model = models.create_model("resnet18", num_classes=10)
  small, large = flops.count(model, (1, 128, 128, 3)), flops.count(model, (1, 256, 256, 3))
  assert small.params == large.params
  head = 512 * 10   # the final linear layer sees the pooled features at any input size
  assert large.conv_linear_macs - head == 4 * (small.conv_linear_macs - head)


def test_features_only_counts_no_pooling_or_classifier():
  model = models.create_model("resnet18", num_classes=10)
  full, features = flops.count(model, (1, 64, 96, 3)), flops.count(model, (1, 64, 96, 3), True)
  head = 512 * 10   # fc multiply-adds; its bias adds 10 more in the ptflops convention
  assert full.params - features.params == head + 10
  assert full.conv_linear_macs - features.conv_linear_macs == head
  assert full.ptflops_macs - features.ptflops_macs == head + 10 + 512 * 2 * 3   # + the avg-pool


@pytest.fixture(scope="module")
def table6():
  return {att: counts for att, counts, _ in flops.table6_rows()}


@pytest.mark.parametrize("attention,expected", list(flops.PAPER_TABLE6_DELTAS.items()))
def test_table6_delta_flops_equal_the_papers_to_its_precision(table6, attention, expected):
  delta = (table6[attention].ptflops_macs - table6[None].ptflops_macs) / 1e9
  assert f"{delta:.3f}" == f"{expected[1]:.3f}"


@pytest.mark.parametrize("attention,expected", list(flops.PAPER_TABLE6_DELTAS.items()))
def test_table6_delta_params_are_table1s_as_the_paper_gives_them(table1, table6, attention,
                                                                  expected):
  plain, attended = table1[("resnet101", None)].params, table1[("resnet101", attention)].params
  # The attention blocks add nothing to the classifier, so the backbone adds what Table 1 adds.
  assert table6[attention].params - table6[None].params == attended - plain
  # The paper's figure is the difference of Table 1's totals rounded to 0.01M.
  assert f"{round(attended / 1e6, 2) - round(plain / 1e6, 2):.2f}" == f"{expected[0]:.2f}"


def test_table6_backbone_has_no_classifier(table1, table6):
  assert table1[("resnet101", None)].params - table6[None].params == 2048 * 1000 + 1000


def test_cli_prints_table1_and_table6_beside_the_paper():
  out = subprocess.run([sys.executable, "-m", "lct_flax.flops"], capture_output=True, text=True,
                       check=True).stdout
  assert "| resnet50 | lct | 25.587 | 25.59 |" in out
  assert "| resnet101 | se | 49.327 | 49.33 |" in out
  assert "1024x1024 input" in out
  assert "| resnet101 | se | 47.278 | +4.778 | +4.78 | 164.185 | +0.191 | +0.191 |" in out
  assert "| resnet101 | lct | 42.565 | +0.065 | +0.06 | 164.180 | +0.187 | +0.187 |" in out
  assert out.count("\n| resnet") == 9
