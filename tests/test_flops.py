"""Table 1's FLOPs column, counted from the models' own layer shapes in the ptflops convention."""

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


def test_cli_prints_table1_beside_the_paper():
  out = subprocess.run([sys.executable, "-m", "lct_flax.flops"], capture_output=True, text=True,
                       check=True).stdout
  assert "| resnet50 | lct | 25.587 | 25.59 |" in out
  assert "| resnet101 | se | 49.327 | 49.33 |" in out
  assert out.count("\n| resnet") == 6
