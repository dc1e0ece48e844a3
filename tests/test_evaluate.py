"""python -m lct_flax.evaluate: every example of the split once, the training's own numbers, JSON
result, and refusals (class-count mismatch) as one-line errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lct_flax import evaluate
from lct_flax import fileio
from lct_flax import input_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "lct_flax.evaluate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_reproduces_the_final_eval_of_training(tiny_demo_run, tiny_demo_export, tmp_path,
                                                   _prepared_digits):
  export_dir = str(tmp_path / "export")
  shutil.copytree(tiny_demo_export, export_dir)  # the default result path is inside the export
  result = run_cli(f"--export={export_dir}", f"--data_dir={_prepared_digits.data_dir}")
  assert result.returncode == 0, result.stderr
  path = os.path.join(export_dir, "eval_sklearn_digits_test.json")
  assert f"wrote {path}" in result.stdout
  with open(path) as f:
    saved = json.load(f)
  metrics = tiny_demo_run.metrics
  assert saved["count"] == 360 == metrics["eval_count"]
  assert saved["top1"] == metrics["eval_top1"]
  assert saved["top5"] == metrics["eval_top5"]
  assert saved["loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
  assert (saved["dataset"], saved["split"], saved["step"]) == ("sklearn_digits", "test", 40)
  assert f"top-1 {100 * metrics['eval_top1']:.2f}%" in result.stdout
  assert "(360 examples)" in result.stdout
  assert not [n for n in os.listdir(export_dir) if n.endswith(".tmp")]


def test_other_batch_sizes_still_count_every_example_once(tiny_demo_run, tiny_demo_export,
                                                          tmp_path):
  # 360 = 7 * 48 + 24: the last batch is half padding.
  result = evaluate.evaluate_export(tiny_demo_export, batch_size=48, split="test",
                                    progress=False)
  assert result["count"] == 360 and result["batch_size"] == 48
  assert result["top1"] == pytest.approx(tiny_demo_run.metrics["eval_top1"], abs=1.5 / 360)
  assert result["top5"] == pytest.approx(tiny_demo_run.metrics["eval_top5"], abs=1.5 / 360)
  assert result["loss"] == pytest.approx(tiny_demo_run.metrics["eval_loss"], rel=1e-4)
  output = str(tmp_path / "sub" / "result.json")
  fileio.write_json_atomically(output, result)
  assert json.load(open(output))["count"] == 360
  assert os.listdir(tmp_path / "sub") == ["result.json"]


def test_default_result_path_is_a_plain_file_name():
  assert evaluate.default_output_path("/e", "imagenet2012", "validation[:10%]") == (
      "/e/eval_imagenet2012_validation_10.json")


def test_a_dataset_with_other_classes_is_refused(make_untrained_export):
  seven = make_untrained_export("lct", num_classes=7, groups=4)
  with pytest.raises(ValueError) as excinfo:
    evaluate.evaluate_export(seven, progress=False)
  message = str(excinfo.value)
  assert "sklearn_digits has 10 classes" in message and "has 7" in message and seven in message
  result = run_cli(f"--export={seven}")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: sklearn_digits has 10 classes")
  assert "Traceback" not in result.stderr
  assert not os.path.exists(os.path.join(seven, "eval_sklearn_digits_test.json"))


def test_missing_export_is_refused_clearly(tmp_path):
  from lct_flax import export
  with pytest.raises(export.ExportError, match="no export at .*nothing.*python -m lct_flax.export"):
    evaluate.evaluate_export(str(tmp_path / "nothing"), progress=False)


@pytest.mark.parametrize("split", [None, "validation"])
def test_a_classifier_on_a_detection_dataset_is_refused_as_such(make_untrained_export,
                                                                shapes_config, split):
  with pytest.raises(input_pipeline.DatasetError) as error:
    evaluate.evaluate_export(make_untrained_export("lct", groups=4), dataset=shapes_config.name,
                             data_dir=shapes_config.data_dir, split=split)
  assert str(error.value).startswith(
      "coco_instances/shapes is not an image classification dataset (its features are ['image',")
  assert str(error.value).endswith("evaluate the classifier on a dataset with 'image' and 'label'.")
