"""Evaluates an export over every example of a split, exactly once, as its task does.

    python -m lct_flax.evaluate --export=EXPORT_DIR [--dataset=NAME --split=SPLIT
        --data_dir=DIR --batch_size=B --output=result.json]

A classifier (`lct_flax.classifier_evaluation`): top-1, top-5 and loss on a tfds split, by default
the one it was trained with and always with its own eval preprocessing; `--dataset` changes only
the data. A detector (`lct_flax.detection.evaluation`): COCO box (and mask) AP on its dataset's
eval split, the COCO results JSONs written beside the result. The last batch is padded and
masked, so every example counts once. The step runs jitted over a mesh of all devices.

The result is printed and written as JSON (default `EXPORT_DIR/eval_<dataset>_<split>.json`):
a classifier's `top1`, `top5` (fractions), `loss`, `count`, `num_skipped`; a detector's AP
columns; both with the dataset, split, export path, source step and model.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import jax

from lct_flax import export as export_lib
from lct_flax import fileio
from lct_flax import tasks


def check_arguments(*, batch_size: Optional[int] = None, data_dir: Optional[str] = None) -> None:
  """Refuses a non-positive batch size or a missing data_dir before anything is loaded."""
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"--batch_size must be positive, got {batch_size}.")
  if data_dir is not None and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"--data_dir {data_dir} does not exist; pass the tfds data directory "
                            f"the dataset was prepared in.")


def evaluate_export(export_dir: str, *, dataset: Optional[str] = None, split: Optional[str] = None,
                    data_dir: Optional[str] = None, batch_size: Optional[int] = None,
                    progress: bool = True, results_dir: Optional[str] = None) -> dict:
  """Evaluates the export on the split (defaults as in the module docstring); returns the result
  dict that the CLI writes. A detector's COCO results JSONs go to `results_dir` (default: the
  export's directory)."""
  check_arguments(batch_size=batch_size, data_dir=data_dir)
  export_dir = os.path.abspath(export_dir)
  model, variables, config = export_lib.load(export_dir)
  return tasks.of_model_section(config.model).evaluate_export(
      export_dir, model, variables, config, dataset=dataset, split=split, data_dir=data_dir,
      batch_size=batch_size, progress=progress, results_dir=results_dir)


def default_output_path(export_dir: str, dataset: str, split: str) -> str:
  safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")
  return os.path.join(os.path.abspath(export_dir), f"eval_{safe(dataset)}_{safe(split)}.json")


def format_result(result: dict) -> str:
  """The line the CLI prints for a result of `evaluate_export`, as its task writes it."""
  return tasks.of_model_section(result["model"]).format_result(result)


def main(argv):
  from absl import app
  from absl import flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  results_dir = (os.path.dirname(os.path.abspath(values.output)) if values.output
                 else os.path.abspath(values.export))
  reason = fileio.unwritable_reason(results_dir) if os.path.isdir(values.export) else None
  if reason:
    raise PermissionError(f"cannot write the evaluation results in {results_dir} ({reason}); "
                          f"pass --output=PATH in a writable directory.")
  result = evaluate_export(values.export, dataset=values.dataset, split=values.split,
                           data_dir=values.data_dir, batch_size=values.batch_size,
                           progress=values.progress, results_dir=results_dir)
  output = values.output or default_output_path(values.export, result["dataset"], result["split"])
  if jax.process_index() == 0:
    print(format_result(result))
    fileio.write_json_atomically(output, result)
    print(f"wrote {os.path.abspath(output)}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("export", None, "Export directory (python -m lct_flax.export).")
  flags.DEFINE_string("dataset", None, "tfds dataset name (default: the export's).")
  flags.DEFINE_string("split", None, "Split to evaluate (default: the export's eval split).")
  flags.DEFINE_string("data_dir", None, "tfds data directory (default: the export's).")
  flags.DEFINE_integer("batch_size", None,
                       "Global eval batch size (default: the training batch size).")
  flags.DEFINE_string("output", None,
                      "Result JSON path (default: EXPORT_DIR/eval_<dataset>_<split>.json); a "
                      "detector's COCO results JSONs go beside it.")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
  flags.mark_flags_as_required(["export"])


if __name__ == "__main__":
  from lct_flax import cli
  _define_flags()
  cli.run(main)
