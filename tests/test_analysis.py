"""python -m lct_flax.analysis: Fig. 3/4 statistics equal a direct computation, files are written,
comparisons overlay two models, and models without attention are refused."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lct_flax import analysis
from lct_flax import export
from lct_flax import input_pipeline
from lct_flax import pixels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "lct_flax.analysis", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def direct_block_averages(export_dir, block, max_examples, batch_size=64):
  """Independent of lct_flax.analysis: capture_intermediates on every module, then NumPy.

  The LCT module's input is BatchNorm (eval mode, NumPy) of the block's last convolution (conv2
  in a basic block); its output is what the block's last BatchNorm returns (it applies the LCT
  gate); the attention values are what LCT sows.
  """
  model, variables, config = export.load(export_dir)
  dataset = input_pipeline.default_dataset_config(
      "sklearn_digits", data_dir=config.dataset.data_dir, image_size=16, resize_size=16)
  bn = {name: np.asarray(value, np.float64) for name, value in
        {**variables["params"][block]["bn2"], **variables["batch_stats"][block]["bn2"]}.items()}
  before, after, attention = [], [], []
  for batch in input_pipeline.create_eval_iterator(dataset, global_batch_size=batch_size):
    images = pixels.normalize(batch["image"], config.dataset.mean, config.dataset.std)
    _, state = model.apply(variables, images, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    node = state["intermediates"][block]
    real = np.asarray(batch["mask"])
    conv = np.asarray(node["conv2"]["__call__"][0], np.float64)[real]
    normalized = (conv - bn["mean"]) / np.sqrt(bn["var"] + 1e-5) * bn["scale"] + bn["bias"]
    before.append(normalized.mean(axis=(1, 2)))
    after.append(np.asarray(node["bn2"]["__call__"][0])[real].mean(axis=(1, 2)))
    attention.append(np.asarray(node["lct"]["attention"][0])[real])
  take = lambda parts: np.concatenate(parts)[:max_examples].astype(np.float64)
  before, after, attention = take(before), take(after), take(attention)
  return before.shape[0], before.mean(0), after.mean(0), attention.mean(0)


@pytest.fixture
def pyplot_on_svg():
  """pyplot switched to a backend other than Agg (as a notebook's inline one), then back."""
  import matplotlib
  from matplotlib import pyplot as plt
  previous = matplotlib.get_backend()
  plt.switch_backend("svg")
  yield plt
  plt.switch_backend(previous)


def test_numbers_equal_a_direct_computation(tiny_demo_export, tmp_path, pyplot_on_svg):
  out = str(tmp_path / "analysis")
  results, paths = analysis.run_analysis(tiny_demo_export, out, max_examples=100, progress=False)
  # The figures are drawn outside pyplot: its backend is kept and no figure is left open.
  assert pyplot_on_svg.get_backend() == "svg" and pyplot_on_svg.get_fignums() == []
  assert sorted(os.listdir(out)) == ["fig3_attention_context.png", "fig4_context_variation.png",
                                     "stats.csv", "stats.json"]
  assert set(paths) == {os.path.join(out, n) for n in os.listdir(out)}
  stats = json.load(open(os.path.join(out, "stats.json")))["models"]
  assert len(stats) == 1 and stats[0]["label"] == "LCT" and stats[0]["count"] == 100
  blocks = stats[0]["blocks"]
  assert list(blocks) == ["layer1_0", "layer2_0", "layer3_0", "layer4_0"]
  assert [blocks[b]["stage"] for b in blocks] == [2, 3, 4, 5]
  assert analysis.figure_title("Fig. 3", results) == (
      "Fig. 3: LCT, resnet18 on sklearn_digits:test (100 examples)")

  count, before, after, attention = direct_block_averages(tiny_demo_export, "layer3_0", 100)
  assert count == 100
  got = blocks["layer3_0"]
  order = np.asarray(got["sorted_channels"])
  assert sorted(order.tolist()) == list(range(32))
  np.testing.assert_allclose(got["context_before"], before[order], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["context_after"], after[order], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["attention"], attention[order], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["abs_variation"], np.abs(after - before)[order], rtol=1e-4,
                             atol=1e-6)
  assert np.all(np.diff(got["context_before"]) >= 0)  # ascending, as in Figs. 1 and 3
  r = np.corrcoef(np.abs(before), attention)[0, 1]
  assert got["pearson_abs_context_attention"] == pytest.approx(r, abs=1e-4)
  assert got["context_std_after"] == pytest.approx(np.std(after), rel=1e-4)

  with open(os.path.join(out, "stats.csv")) as f:
    rows = [row for row in csv.DictReader(f) if row["block"] == "layer3_0"]
  assert [int(row["channel"]) for row in rows] == order.tolist()
  np.testing.assert_allclose([float(row["attention"]) for row in rows], attention[order],
                             rtol=1e-5, atol=1e-6)


def test_cli_compares_two_models_over_all_blocks(tiny_demo_export, make_untrained_export,
                                                 tmp_path):
  se = make_untrained_export("se", reduction=2)
  out = str(tmp_path / "compare")
  result = run_cli(f"--export={tiny_demo_export}", f"--compare={se}", f"--output={out}",
                   "--all_blocks", "--progress=false")
  assert result.returncode == 0, result.stderr
  assert "360 examples of sklearn_digits:test" in result.stdout
  assert "r(|ctx|,att)" in result.stdout
  names = sorted(os.listdir(out))
  for prefix in ("fig3_attention_context", "fig4_context_variation"):
    assert f"{prefix}.png" in names
    assert all(f"{prefix}_stage{s}.png" in names for s in (2, 3, 4, 5))
  for name in names:
    if name.endswith(".png"):
      assert open(os.path.join(out, name), "rb").read(8) == PNG_MAGIC
  models = json.load(open(os.path.join(out, "stats.json")))["models"]
  assert [m["label"] for m in models] == ["LCT", "SE"]
  assert all(m["count"] == 360 for m in models)
  assert all(len(m["blocks"]) == 8 for m in models)  # resnet18: 2 blocks in each of 4 stages
  for block in models[1]["blocks"].values():
    assert len(block["attention"]) == block["channels"]
    assert all(0.0 < a < 1.0 for a in block["attention"])
  with open(os.path.join(out, "stats.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 2 * (8 + 16 + 32 + 64)


def test_a_model_without_attention_is_refused(make_untrained_export, tmp_path):
  plain = make_untrained_export(None)
  with pytest.raises(analysis.AnalysisError, match="no attention blocks"):
    analysis.run_analysis(plain, str(tmp_path / "out"), progress=False)
  lct = make_untrained_export("lct", groups=4)
  with pytest.raises(analysis.AnalysisError, match="no attention blocks"):
    analysis.run_analysis(lct, str(tmp_path / "out"), compare=plain, progress=False)
  result = run_cli(f"--export={plain}", f"--output={tmp_path / 'out'}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: the model has no attention blocks")
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "out")
