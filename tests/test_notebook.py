"""notebooks/lct_quickstart.ipynb: committed without outputs, and executed top to bottom (nbclient)
in a kernel of this interpreter, as a shorter version (width 1/8, batch 32, few steps), with
assertions on what it computes."""

import json
import os
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from lct_flax import flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "lct_quickstart.ipynb")

# The notebook's parameters for the test: the models, batches and runs of the tiny demo tests.
SHORT_RUN = {"LCT_NOTEBOOK_WIDTH": "0.125", "LCT_NOTEBOOK_BATCH_SIZE": "32",
             "LCT_NOTEBOOK_TRAIN_STEPS": "60", "LCT_NOTEBOOK_FINETUNE_STEPS": "30",
             "LCT_NOTEBOOK_VARIANTS": "se"}

# Appended to the notebook in the test only: what its cells computed, as one JSON line.
REPORT_CELL = """
import json
import resource
print(json.dumps({
    "python": sys.executable,
    "table1_params": {f"{name}/{attention}": counts.params
                      for (name, attention), counts in table1.items()},
    "lct_max_difference": lct_max_difference,
    "losses": [float(m["loss"]) for m in lct_history],
    "lct_top1": lct_test["eval_top1"],
    "se_top1": runs["se"][2]["eval_top1"],
    "export_top1": lct_evaluation["top1"],
    "export_count": lct_evaluation["count"],
    "analysis": {r.label: [r.count, list(r.blocks)] for r in analysis_results},
    "analysis_files": sorted(os.path.basename(p) for p in analysis_files),
    "finetune": finetune_result,
    "unchanged": unchanged,
    "cpu_seconds": sum(getattr(resource.getrusage(who), field)
                       for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                       for field in ("ru_utime", "ru_stime")),
}))
"""

# Parameters of torchvision's resnet50/101 and timm's seresnet50/101; LCT adds (w, b) per channel
# of every block: 2 x 15,104 (ResNet-50) and 2 x 32,512 (ResNet-101).
TABLE1_PARAMS = {"resnet50/none": 25_557_032, "resnet50/se": 28_088_024,
                 "resnet50/lct": 25_557_032 + 30_208, "resnet101/none": 44_549_160,
                 "resnet101/se": 49_326_872, "resnet101/lct": 44_549_160 + 65_024}


def test_the_committed_notebook_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert len(code) >= 6
  assert [cell.outputs for cell in code] == [[] for _ in code]
  assert [cell.execution_count for cell in code] == [None for _ in code]


def kernel_of_this_python(spec_root):
  """A kernel manager that starts ipykernel with this interpreter (the venv's), through a
  kernelspec of its own in `spec_root`."""
  spec_dir = spec_root / "lct-flax-test"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "lct-flax test", "language": "python"}))
  return KernelManager(kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_root)]),
                       kernel_name="lct-flax-test")


@pytest.fixture(scope="module")
def executed(tmp_path_factory, _prepared_digits):
  """The notebook run top to bottom in the short version, its report cell appended:
  (notebook with outputs, the report)."""
  tmp = tmp_path_factory.mktemp("notebook")
  environment = {**os.environ, **SHORT_RUN, "LCT_NOTEBOOK_DATA_DIR": _prepared_digits.data_dir,
                 "LCT_NOTEBOOK_WORKDIR": str(tmp / "work")}
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  notebook.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
  client = NotebookClient(notebook, km=kernel_of_this_python(tmp / "kernels"), timeout=600,
                          resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute(env=environment, cleanup_kc=True)   # the kernel is shut down at the end
  report_text = "".join(output.get("text", "") for output in notebook.cells[-1].outputs
                        if output.output_type == "stream" and output.name == "stdout")
  return notebook, json.loads(report_text)


def test_it_runs_in_a_kernel_of_this_interpreter(executed):
  _, report = executed
  assert report["python"] == sys.executable
  print("CPU", report["cpu_seconds"])


def test_table1_parameter_counts(executed):
  _, report = executed
  assert report["table1_params"] == TABLE1_PARAMS
  for key, params in report["table1_params"].items():
    name, attention = key.split("/")
    paper = flops.PAPER_TABLE1[name, None if attention == "none" else attention][0]
    assert abs(params / 1e6 - paper) < 0.005


def test_lct_block_equals_eqs_2_to_5_by_hand(executed):
  _, report = executed
  assert 0.0 <= report["lct_max_difference"] < 1e-5


def test_functional_training_learns_and_the_export_scores_the_same(executed):
  _, report = executed
  losses = report["losses"]
  assert len(losses) == int(SHORT_RUN["LCT_NOTEBOOK_TRAIN_STEPS"])
  # 60 steps are mid-learning: float rounding (the CPU, the XLA version) moves the curve and the
  # eval accuracy by points (seen: loss ratio 0.43, top-1 0.79-0.86), so the margins are wide.
  assert sum(losses[-10:]) < 0.7 * sum(losses[:10])
  assert report["lct_top1"] > 0.5 and report["se_top1"] > 0.5   # chance: 0.1
  assert report["export_count"] == 360
  assert report["export_top1"] == pytest.approx(report["lct_top1"], abs=1 / 360)


def test_fig3_analysis_of_lct_beside_se(executed):
  _, report = executed
  blocks = ["layer1_0", "layer2_0", "layer3_0", "layer4_0"]
  assert report["analysis"] == {"LCT": [360, blocks], "SE": [360, blocks]}
  assert report["analysis_files"] == ["fig3_attention_context.png",
                                      "fig4_context_variation.png", "stats.csv", "stats.json"]


def test_finetuning_trains_only_the_new_head(executed):
  _, report = executed
  finetune = report["finetune"]
  assert finetune["step"] == int(SHORT_RUN["LCT_NOTEBOOK_FINETUNE_STEPS"])
  assert finetune["eval_count"] == 360 and finetune["eval_top1"] > 0.5   # seen: 0.83
  unchanged = report["unchanged"]
  assert not unchanged.pop("fc")
  assert unchanged and all(unchanged.values())   # frozen_stages=4, frozen_bn: all but the head


def test_every_plot_is_shown_inline(executed):
  notebook, _ = executed
  plotting = [cell for cell in notebook.cells
              if cell.cell_type == "code" and ("plt.show()" in cell.source or
                                               "display(Image" in cell.source)]
  assert len(plotting) >= 5
  for cell in plotting:
    assert any("image/png" in output.get("data", {}) for output in cell.outputs), cell.source
