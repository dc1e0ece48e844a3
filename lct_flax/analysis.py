"""The paper's attention analysis (Figs. 1, 3 and 4) for an exported model.

    python -m lct_flax.analysis --export=EXPORT_DIR [--compare=OTHER_EXPORT] --output=OUT_DIR
        [--all_blocks] [--dataset=NAME --split=SPLIT --data_dir=DIR --batch_size=B
        --max_examples=N]

For the first attention block of every stage (`--all_blocks`: every block), averaged over the
real (unmasked) examples of the eval split:

* `context_before`: the global context feature of the block's input, mean over H and W of the
  tensor the attention block (LCT/SE) rescales;
* `context_after`: the same of the block's output (input x attention);
* `attention`: the attention values sigmoid(a) of the block (sown by the block itself);
* `abs_variation`: |context_after - context_before| (Fig. 4).

Channels are sorted by `context_before` in ascending order, as in Figs. 1 and 3. Per block we
also report the Pearson correlation between |context_before| and the attention (the paper's
"negative correlation": channels with large absolute context get small attention), and the spread
of the contexts across channels before and after the block.

Written to OUT_DIR: `fig3_attention_context.png` (one column per stage: attention on top, context
before/after below; with --compare both models overlaid), `fig4_context_variation.png`, with
--all_blocks also `fig3_attention_context_stageS.png` / `fig4_context_variation_stageS.png` (one
column per block of stage S; stages are numbered as in the paper, the stem being stage 1, so
`layer1_*` is stage 2 and ResNet-50's last stage is stage 5), `stats.json` (everything, per model
and block) and `stats.csv` (one row per model, block and channel, in sorted order).

The contexts are captured with `flax.linen.intercept_methods` around the attention modules'
`gate` (context in, attention out; the context after the block is context x attention, as the
attention is constant over H and W), summed over masked examples inside the jitted step, so only
(C,) vectors leave the devices.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import os
import re
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lct_flax import attention as attention_lib
from lct_flax import blocks as blocks_lib
from lct_flax import classifier_evaluation
from lct_flax import evaluate as evaluate_lib
from lct_flax import fileio
from lct_flax import export as export_lib
from lct_flax import parallel
from lct_flax import pixels

QUANTITIES = ("context_before", "context_after", "attention")
_BLOCK_NAME = re.compile(r"^layer(\d+)_(\d+)$")


class AnalysisError(ValueError):
  """The analysis cannot run as asked (no attention, incomparable models, nothing to average)."""


@dataclasses.dataclass
class BlockStats:
  """Averages over the examples for one attention block; arrays in channel order, shape (C,).

  `stage` counts as the paper and the ResNet paper do: the stem is stage 1, so residual block
  `layerS_I` is in stage S + 1 (conv{S+1}_x); `index` is I.
  """
  name: str
  stage: int
  index: int
  context_before: np.ndarray
  context_after: np.ndarray
  attention: np.ndarray

  @property
  def channels(self) -> int:
    return int(self.context_before.shape[0])

  @property
  def order(self) -> np.ndarray:
    """Channel indices sorted by context_before, ascending (ties by channel index)."""
    return np.argsort(self.context_before, kind="stable")

  @property
  def abs_variation(self) -> np.ndarray:
    return np.abs(self.context_after - self.context_before)

  def summary(self) -> dict:
    return {
        "pearson_abs_context_attention": _pearson(np.abs(self.context_before), self.attention),
        "pearson_context_attention": _pearson(self.context_before, self.attention),
        "mean_attention": float(np.mean(self.attention)),
        "context_std_before": float(np.std(self.context_before)),
        "context_std_after": float(np.std(self.context_after)),
        "mean_abs_variation": float(np.mean(self.abs_variation)),
    }

  def to_json(self) -> dict:
    order = self.order
    return {
        "stage": self.stage, "index": self.index, "channels": self.channels,
        **self.summary(),
        "sorted_channels": order.tolist(),
        **{key: getattr(self, key)[order].tolist()
           for key in (*QUANTITIES, "abs_variation")},
    }


@dataclasses.dataclass
class ModelStats:
  """The analysis of one export."""
  label: str
  export_dir: str
  config: ml_collections.ConfigDict
  dataset: str
  split: str
  count: int
  blocks: dict  # name -> BlockStats, in network order

  def to_json(self) -> dict:
    return {"label": self.label, "export": self.export_dir, "model": self.config.model.to_dict(),
            "step": self.config.get("source", {}).get("step"), "dataset": self.dataset,
            "split": self.split, "count": self.count,
            "blocks": {name: block.to_json() for name, block in self.blocks.items()}}


def _pearson(x: np.ndarray, y: np.ndarray) -> Optional[float]:
  x = np.asarray(x, np.float64) - np.mean(x)
  y = np.asarray(y, np.float64) - np.mean(y)
  denominator = math.sqrt(float(np.sum(x * x)) * float(np.sum(y * y)))
  if denominator == 0.0:
    return None  # a constant vector has no correlation
  return float(np.sum(x * y) / denominator)


# ---------------------------------------------------------------------------------------------
# Which blocks.


def _label(attention: str) -> str:
  block = blocks_lib.get(attention)
  return block.label if block else attention


def attention_module_name(model_config: Any) -> str:
  attention = model_config.get("attention")
  if attention in (None, "none"):
    raise AnalysisError("the model has no attention blocks (attention=none): the analysis needs an "
                        "SE or LCT model.")
  return blocks_lib.get(attention).module_name


def attention_blocks(params: Any, module_name: str, all_blocks: bool = False) -> list[str]:
  """Residual blocks `layerS_I` holding an attention module: the first of each stage (I=0), or
  all of them; in network order."""
  found = []
  for name, node in params.items():
    match = _BLOCK_NAME.match(name)
    if match and module_name in node:
      found.append((int(match.group(1)), int(match.group(2)), name))
  found.sort()
  return [name for stage, index, name in found if all_blocks or index == 0]


# ---------------------------------------------------------------------------------------------
# The statistics.


def _capture_contexts(next_fun, args, kwargs, context):
  """Interceptor: sows the context before and after every attention block, from its `gate`."""
  out = next_fun(*args, **kwargs)
  if context.method_name == "gate" and isinstance(context.module,
                                                  attention_lib.ChannelAttention):
    before = args[0].astype(jnp.float32)
    context.module.sow("intermediates", "context_before", before)
    context.module.sow("intermediates", "context_after", before * out)
  return out


def statistics_step(variables: dict, batch: dict, *, model: nn.Module, blocks: Sequence[str],
                    module_name: str, mean: Optional[Sequence[float]] = None,
                    std: Optional[Sequence[float]] = None) -> dict:
  """Sums over the masked examples of the batch: per block the three (C,) quantities; `count`.
  uint8 images are normalised with `mean`/`std` first (`pixels.normalize`)."""
  images = pixels.normalize(batch["image"], mean, std)
  with nn.intercept_methods(_capture_contexts):
    _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
  mask = batch["mask"].astype(jnp.float32)
  sums = {"count": jnp.sum(mask)}
  for name in blocks:
    node = state["intermediates"][name][module_name]
    sums[name] = {key: jnp.sum(node[key][0].astype(jnp.float32) * mask[:, None], axis=0)
                  for key in QUANTITIES}
  return sums


def _limit_examples(batches: Iterator[dict], max_examples: Optional[int]) -> Iterator[dict]:
  """Masks out every real example after the first `max_examples` and stops once they are seen."""
  if max_examples is None:
    yield from batches
    return
  seen = 0
  for batch in batches:
    if seen >= max_examples:
      return
    mask = np.asarray(batch["mask"], bool)
    keep = mask & (np.cumsum(mask) <= max_examples - seen)
    seen += int(keep.sum())
    yield {**batch, "mask": keep}


def compute_statistics(model: nn.Module, variables: dict, batches: Iterator[dict],
                       blocks: Sequence[str], module_name: str, mesh=None, *,
                       mean: Optional[Sequence[float]] = None,
                       std: Optional[Sequence[float]] = None) -> tuple[dict, int]:
  """Averages over the masked examples of host-local `batches` ({"image", "label", "mask"});
  uint8 images are normalised with `mean`/`std` on the device.

  Returns ({block name: BlockStats}, number of examples).
  """
  from lct_flax import input_pipeline  # prefetch_to_mesh; the batches come from it anyway
  mesh = parallel.create_mesh() if mesh is None else mesh
  replicated = parallel.replicated_sharding(mesh)
  data_sharding = parallel.batch_sharding(mesh)
  step = jax.jit(functools.partial(statistics_step, model=model, blocks=tuple(blocks),
                                   module_name=module_name, mean=mean, std=std),
                 in_shardings=(replicated, data_sharding), out_shardings=replicated)
  variables = jax.device_put(variables, replicated)
  totals = None
  for batch in input_pipeline.prefetch_to_mesh(batches, data_sharding):
    sums = jax.device_get(step(variables, batch))
    sums = jax.tree.map(lambda a: np.asarray(a, np.float64), sums)
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  count = 0 if totals is None else int(round(float(totals["count"])))
  if count == 0:
    raise AnalysisError("no examples to average over: the split (or --max_examples) is empty.")
  stats = {}
  for name in blocks:
    layer, index = (int(g) for g in _BLOCK_NAME.match(name).groups())
    stats[name] = BlockStats(name=name, stage=layer + 1, index=index,
                             **{key: totals[name][key] / count for key in QUANTITIES})
  return stats, count


def analyze_export(export_dir: str, *, dataset: Optional[str] = None, split: Optional[str] = None,
                   data_dir: Optional[str] = None, batch_size: Optional[int] = None,
                   max_examples: Optional[int] = None, all_blocks: bool = False,
                   progress: bool = True, label: Optional[str] = None) -> ModelStats:
  """Loads the export and computes the statistics on its eval data (or the given dataset)."""
  export_dir = os.path.abspath(export_dir)
  model, variables, config = export_lib.load(export_dir)
  from lct_flax import input_pipeline  # TensorFlow: only once the export is known to be good
  module_name = attention_module_name(config.model)
  blocks = attention_blocks(variables["params"], module_name, all_blocks)
  if not blocks:
    raise AnalysisError(f"found no {module_name!r} blocks in the parameters of {export_dir}.")
  dataset_config = classifier_evaluation.eval_dataset_config(config, dataset=dataset, split=split,
                                                    data_dir=data_dir)
  info = classifier_evaluation.dataset_info(dataset_config)
  classifier_evaluation.check_num_classes(int(config.model.num_classes), info, dataset_config,
                                          export_dir)
  mesh = parallel.create_mesh()
  if batch_size is None:
    batch_size = classifier_evaluation.default_batch_size(config, mesh.devices.size)
  parallel.check_batch_size(batch_size, mesh)
  raw = input_pipeline.create_eval_iterator(dataset_config, global_batch_size=batch_size)
  total = input_pipeline.num_eval_batches(dataset_config, batch_size)
  if max_examples is not None:
    total = min(total, math.ceil(max_examples / batch_size) + 1)
  batches = classifier_evaluation.with_progress_bar(
      _limit_examples(raw, max_examples), total,
      f"{os.path.basename(export_dir)} on {dataset_config.name}:{dataset_config.eval_split}",
      progress and jax.process_index() == 0)
  stats, count = compute_statistics(model, variables, batches, blocks, module_name, mesh,
                                    mean=dataset_config.mean, std=dataset_config.std)
  return ModelStats(label=label or _label(config.model.attention),
                    export_dir=export_dir, config=config, dataset=dataset_config.name,
                    split=dataset_config.eval_split, count=count, blocks=stats)


# ---------------------------------------------------------------------------------------------
# Output.


def write_csv(path: str, results: Sequence[ModelStats]) -> None:
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(["model", "block", "stage", "index", "rank", "channel", "context_before",
                   "context_after", "attention", "abs_variation"])
  for result in results:
    for name, block in result.blocks.items():
      variation = block.abs_variation
      for rank, channel in enumerate(block.order):
        writer.writerow([result.label, name, block.stage, block.index, rank, int(channel),
                         repr(float(block.context_before[channel])),
                         repr(float(block.context_after[channel])),
                         repr(float(block.attention[channel])), repr(float(variation[channel]))])
  data = text.getvalue().encode()
  fileio.atomic_write(path, lambda f: f.write(data))


def _figure(columns: int, rows: int):
  """A figure of its own, outside pyplot: the process's matplotlib backend (a notebook's inline
  one) is neither needed nor changed, and nothing is left open."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(3.2 * columns, 2.6 * rows))
  return fig, fig.subplots(rows, columns, squeeze=False)


def _save_figure(fig, path: str) -> None:
  fig.tight_layout()
  fileio.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def _title(block: BlockStats) -> str:
  return f"stage {block.stage} ({block.name})" if block.index == 0 else block.name


def figure_title(what: str, results: Sequence[ModelStats]) -> str:
  """The overall title: the figure, the models compared, the network and the data."""
  first = results[0]
  return (f"{what}: {' vs '.join(r.label for r in results)}, {first.config.model.name} on "
          f"{first.dataset}:{first.split} ({first.count} examples)")


def _channel_axis(ax) -> None:
  """Channel ranks on the x axis: integer ticks, labelled."""
  from matplotlib.ticker import MaxNLocator
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("channel (sorted by context before)", fontsize=8)
  ax.tick_params(labelsize=7)


def plot_fig3(path: str, results: Sequence[ModelStats], names: Sequence[str]) -> None:
  """Top row: attention per channel; bottom: context before (solid) and after (dashed); channels
  sorted by context before. One column per block; models overlaid."""
  fig, axes = _figure(len(names), 2)
  for column, name in enumerate(names):
    for i, result in enumerate(results):
      block = result.blocks[name]
      order, color = block.order, f"C{i}"
      ranks = np.arange(block.channels)
      axes[0, column].plot(ranks, block.attention[order], ".", ms=2.5, color=color,
                           label=result.label)
      axes[1, column].plot(ranks, block.context_before[order], "-", lw=1.2, color=color,
                           label=f"{result.label} before")
      axes[1, column].plot(ranks, block.context_after[order], "--", lw=1.0, color=color,
                           alpha=0.8, label=f"{result.label} after")
    block = results[0].blocks[name]
    axes[0, column].set_title(_title(block), fontsize=9)
    axes[0, column].set_ylabel("attention", fontsize=8)
    axes[1, column].set_ylabel("global context", fontsize=8)
    for ax in axes[:, column]:
      _channel_axis(ax)
  axes[0, 0].legend(fontsize=7, markerscale=3)
  axes[1, 0].legend(fontsize=6)
  fig.suptitle(figure_title("Fig. 3, attention and global context per channel", results),
               fontsize=10)
  _save_figure(fig, path)


def plot_fig4(path: str, results: Sequence[ModelStats], names: Sequence[str]) -> None:
  """|context after - context before| per channel (sorted by context before), one column per
  block; models overlaid."""
  fig, axes = _figure(len(names), 1)
  for column, name in enumerate(names):
    ax = axes[0, column]
    for i, result in enumerate(results):
      block = result.blocks[name]
      ax.plot(np.arange(block.channels), block.abs_variation[block.order], "-", lw=1.0,
              color=f"C{i}", label=f"{result.label} (mean {np.mean(block.abs_variation):.3g})")
    ax.set_title(_title(results[0].blocks[name]), fontsize=9)
    ax.set_ylabel("|after - before|", fontsize=8)
    _channel_axis(ax)
    ax.legend(fontsize=6)
  fig.suptitle(figure_title("Fig. 4, variation of the global context", results), fontsize=10)
  _save_figure(fig, path)


def write_outputs(output_dir: str, results: Sequence[ModelStats]) -> list[str]:
  """Figures, stats.json and stats.csv in `output_dir`; returns the paths written."""
  output_dir = os.path.abspath(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  names = list(results[0].blocks)
  first = [n for n in names if results[0].blocks[n].index == 0]
  paths = [os.path.join(output_dir, "fig3_attention_context.png"),
           os.path.join(output_dir, "fig4_context_variation.png")]
  plot_fig3(paths[0], results, first)
  plot_fig4(paths[1], results, first)
  if len(first) != len(names):  # --all_blocks: one figure pair per stage, a column per block
    for stage in sorted({results[0].blocks[n].stage for n in names}):
      in_stage = [n for n in names if results[0].blocks[n].stage == stage]
      for prefix, plot in (("fig3_attention_context", plot_fig3),
                           ("fig4_context_variation", plot_fig4)):
        path = os.path.join(output_dir, f"{prefix}_stage{stage}.png")
        plot(path, results, in_stage)
        paths.append(path)
  json_path = os.path.join(output_dir, "stats.json")
  fileio.write_json_atomically(json_path, {"models": [r.to_json() for r in results]})
  csv_path = os.path.join(output_dir, "stats.csv")
  write_csv(csv_path, results)
  return paths + [json_path, csv_path]


def _unique_labels(results: Sequence[ModelStats]) -> None:
  if len({r.label for r in results}) < len(results):
    for r in results:
      r.label = f"{r.label} ({os.path.basename(r.export_dir.rstrip(os.sep))})"


def run_analysis(export_dir: str, output_dir: str, *, compare: Optional[str] = None,
                 dataset: Optional[str] = None, split: Optional[str] = None,
                 data_dir: Optional[str] = None, batch_size: Optional[int] = None,
                 max_examples: Optional[int] = None, all_blocks: bool = False,
                 progress: bool = True) -> tuple[list[ModelStats], list[str]]:
  """The whole analysis: `export_dir` (and `compare`, on the same data) -> files in output_dir."""
  evaluate_lib.check_arguments(batch_size=batch_size, data_dir=data_dir)
  if max_examples is not None and max_examples < 1:
    raise AnalysisError(f"--max_examples must be positive, got {max_examples}.")
  options = dict(batch_size=batch_size, max_examples=max_examples, all_blocks=all_blocks,
                 progress=progress)
  if compare is not None:  # fail fast, before the first (slow) pass
    attention_module_name(export_lib.read_metadata(compare)["model"])
  results = [analyze_export(export_dir, dataset=dataset, split=split, data_dir=data_dir,
                            **options)]
  if compare is not None:
    first = results[0]
    data_dir_used = first.config.dataset.get("data_dir") if data_dir is None else data_dir
    other = analyze_export(compare, dataset=first.dataset, split=first.split,
                           data_dir=data_dir_used, **options)
    if list(other.blocks) != list(first.blocks) or any(
        other.blocks[n].channels != first.blocks[n].channels for n in first.blocks):
      raise AnalysisError(
          f"cannot compare {export_dir} and {compare}: their attention blocks differ "
          f"({list(first.blocks)} vs {list(other.blocks)} or channel counts); compare models of "
          f"the same depth and width.")
    results.append(other)
  _unique_labels(results)
  return results, write_outputs(output_dir, results)


def format_summary(results: Sequence[ModelStats]) -> str:
  lines = [f"{'model':<12} {'block':<10} {'C':>5} {'r(|ctx|,att)':>13} {'mean att':>9} "
           f"{'ctx std before':>15} {'after':>8}"]
  for result in results:
    for name, block in result.blocks.items():
      s = block.summary()
      r = s["pearson_abs_context_attention"]
      lines.append(f"{result.label:<12} {name:<10} {block.channels:>5} "
                   f"{'n/a' if r is None else f'{r:+.3f}':>13} {s['mean_attention']:>9.3f} "
                   f"{s['context_std_before']:>15.4g} {s['context_std_after']:>8.4g}")
  return "\n".join(lines)


def main(argv):
  from absl import app
  from absl import flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  results, paths = run_analysis(
      values.export, values.output, compare=values.compare, dataset=values.dataset,
      split=values.split, data_dir=values.data_dir, batch_size=values.batch_size,
      max_examples=values.max_examples, all_blocks=values.all_blocks, progress=values.progress)
  print(f"{results[0].count} examples of {results[0].dataset}:{results[0].split}")
  print(format_summary(results))
  print(f"wrote {len(paths)} files to {os.path.abspath(values.output)}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("export", None, "Export directory of an SE or LCT model.")
  flags.DEFINE_string("compare", None, "A second export to overlay (e.g. SE next to LCT).")
  flags.DEFINE_string("output", None, "Directory for the figures, stats.json and stats.csv.")
  flags.DEFINE_bool("all_blocks", False, "Every attention block, not only the first per stage.")
  flags.DEFINE_string("dataset", None, "tfds dataset name (default: the export's).")
  flags.DEFINE_string("split", None, "Split (default: the export's eval split).")
  flags.DEFINE_string("data_dir", None, "tfds data directory (default: the export's).")
  flags.DEFINE_integer("batch_size", None, "Global batch size (default: the training one).")
  flags.DEFINE_integer("max_examples", None, "Use only the first N examples of the split.")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
  flags.mark_flags_as_required(["export", "output"])


if __name__ == "__main__":
  from lct_flax import cli
  _define_flags()
  cli.run(main)
