"""Shared fixtures: tiny fake ILSVRC2012 tars prepared by the real tfds builder, sklearn_digits;
one JAX compilation cache for the whole run; the suite's compile flags (`child_env`)."""

import os
import shutil
import tempfile

import jax
import pytest

# Where installed (interop tests), before TensorFlow: torchvision's ops crash loading after it.
try:
  import torchvision  # noqa: F401
except ImportError:
  pass

import child_env  # noqa: E402
from lct_flax import input_pipeline  # noqa: E402  (imports TensorFlow)
from lct_flax.datasets import fake_ilsvrc

# Set by the process that made the cache; the xdist workers and the training processes that the
# tests start inherit it.
_CACHE_VARIABLE = "LCT_FLAX_TEST_JAX_CACHE"


def pytest_configure(config):
  """One persistent JAX compilation cache for the whole run, empty at the start and shared by
  both xdist workers: the test processes and every training process they start (they inherit
  the environment) compile a given program once, and each later process that runs it (another
  test's run of the same config, a resumed or restarted run) loads it instead of compiling it
  again; every program, not only those that take a second to compile (JAX's default): a
  training process then starts 0.6 CPU s sooner. The process that made it removes it at the
  end."""
  if _CACHE_VARIABLE not in os.environ:
    os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="lct-flax-test-jax-cache-")
    config.made_compilation_cache = True
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_VARIABLE]
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  if child_env.COMPILE_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {child_env.COMPILE_FLAGS}"
  jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def pytest_unconfigure(config):
  if getattr(config, "made_compilation_cache", False):
    shutil.rmtree(os.environ.pop(_CACHE_VARIABLE), ignore_errors=True)


# The test files that take longest (pytest --durations on a 2-core CPU: about 400 s down to 25 s),
# longest first. scripts/test.sh hands files to its two workers in collection order
# (--dist loadfile --no-loadscope-reorder), so the long ones start first and the workers finish
# together instead of one running a long file alone at the end.
LONGEST_FIRST = ("test_reliability.py", "test_trainer.py", "test_detection_training.py",
                 "test_plan.py", "test_plan_gpu.py", "test_detection_mask_training.py",
                 "test_notebook.py", "test_finetune.py", "test_models.py", "test_analysis.py",
                 "test_input_pipeline.py", "test_interop.py", "test_extension.py",
                 "test_accelerator_check.py", "test_detection_masks.py", "test_legacy_stack.py",
                 "test_detection_interop.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))

# 3 classes x 4 train images, 9 validation images (not a multiple of the test batch sizes), sides
# 6..60 px so that some images are smaller than the 16 px crops the tests use.
FAKE_ILSVRC_SHAPE = dict(num_classes=3, images_per_class=4, num_val=9, size_range=(6, 60))


@pytest.fixture(scope="session")
def fake_ilsvrc_tars(tmp_path_factory):
  """A ``fake_ilsvrc.FakeIlsvrc``: ILSVRC2012 train/val tars in a temporary manual dir."""
  manual_dir = tmp_path_factory.mktemp("ilsvrc_manual")
  return fake_ilsvrc.write_ilsvrc_tars(str(manual_dir), **FAKE_ILSVRC_SHAPE)


@pytest.fixture(scope="session")
def _prepared_imagenet(fake_ilsvrc_tars, tmp_path_factory):
  config = input_pipeline.default_dataset_config(
      "imagenet2012", data_dir=str(tmp_path_factory.mktemp("imagenet_data")),
      manual_dir=fake_ilsvrc_tars.manual_dir, image_size=16, shuffle_buffer=32)
  input_pipeline.prepare_dataset(config)
  return config


@pytest.fixture
def imagenet_config(_prepared_imagenet):
  """Dataset config of the real imagenet2012 builder prepared from ``fake_ilsvrc_tars``.

  16 px crops (eval resize 18), shuffle buffer 32. A fresh copy per test: edit it freely.
  """
  return _prepared_imagenet.copy_and_resolve_references()


@pytest.fixture(scope="session")
def _prepared_digits(tmp_path_factory):
  config = input_pipeline.default_dataset_config(
      "sklearn_digits", data_dir=str(tmp_path_factory.mktemp("digits_data")), image_size=8,
      resize_size=8, shuffle_buffer=2048)
  input_pipeline.prepare_dataset(config)
  return config


@pytest.fixture
def digits_config(_prepared_digits):
  """Dataset config of ``sklearn_digits`` prepared in a temporary data_dir; 8 px, no resizing."""
  return _prepared_digits.copy_and_resolve_references()


# ---------------------------------------------------------------------------------------------
# A tiny trained demo run and its export (tests of export, evaluate and analysis).

# configs/demo.py shrunk to train in about half a minute on 2 CPU cores.
TINY_DEMO = dict(num_train_steps=40, width=0.125, image_size=16, log_every_steps=10)


@pytest.fixture(scope="session")
def tiny_demo_run(_prepared_digits, tmp_path_factory):
  """A finished 40-step run of configs/demo.py (width 1/8, 16 px) on the prepared digits.

  A namespace with ``config``, ``workdir`` and ``metrics`` (what train_and_evaluate returned:
  eval_top1, eval_top5, eval_loss, eval_count, step). Read-only: copy the workdir to change it.
  """
  import types

  from lct_flax.tasks.classification import TASK as CLASSIFICATION
  from tiny import tiny_demo_config

  config = tiny_demo_config(_prepared_digits.data_dir,
                            num_train_steps=TINY_DEMO["num_train_steps"],
                            log_every_steps=TINY_DEMO["log_every_steps"],
                            checkpoint_every_steps=100_000, eval_every_epochs=1)
  workdir = str(tmp_path_factory.mktemp("tiny_demo_workdir"))
  metrics = CLASSIFICATION.train_and_evaluate(config, workdir)
  return types.SimpleNamespace(config=config, workdir=workdir, metrics=metrics)


@pytest.fixture(scope="session")
def tiny_demo_export(tiny_demo_run, tmp_path_factory):
  """Path of the export of ``tiny_demo_run`` (lct_flax.export.export_workdir). Read-only: copy it
  (shutil.copytree) before adding or damaging files."""
  from lct_flax import export

  return export.export_workdir(tiny_demo_run.workdir,
                               str(tmp_path_factory.mktemp("tiny_demo") / "export"))


@pytest.fixture
def make_untrained_export(_prepared_digits, tmp_path):
  """``make(attention, num_classes=10, **attention_kwargs) -> path``: an export of an untrained
  tiny ResNet-18 (width 1/8, small stem, 16 px digits preprocessing). Its variables are seeded
  NumPy draws (N(0, 0.1^2) parameters, BatchNorm scale 1, running mean 0 and variance 1), which
  avoids the ~10 s first eager `model.init` on CPU."""
  import jax
  import numpy as np

  from lct_flax import export
  from lct_flax.tasks.classification import TASK as CLASSIFICATION

  def fill(path, spec, rng):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(spec.shape, np.float32)
    if name == "mean":
      return np.zeros(spec.shape, np.float32)
    return (0.1 * rng.standard_normal(spec.shape)).astype(np.float32)

  def make(attention, num_classes=10, **attention_kwargs):
    model_config = dict(name="resnet18", attention=attention, attention_kwargs=attention_kwargs,
                        width=TINY_DEMO["width"], small_stem=True, num_classes=num_classes,
                        dtype="float32")
    size = TINY_DEMO["image_size"]
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, spec: fill(path, spec, rng),
        CLASSIFICATION.abstract_variables(
            CLASSIFICATION.build_model(model_config), {"image_size": size}))
    dataset_config = dict(name="sklearn_digits", eval_split="test",
                          data_dir=_prepared_digits.data_dir, image_size=size, resize_size=size,
                          mean=list(input_pipeline.IMAGENET_MEAN_RGB),
                          std=list(input_pipeline.IMAGENET_STDDEV_RGB))
    return export.save(str(tmp_path / f"untrained_{attention}_{num_classes}"), variables,
                       model_config=model_config, dataset_config=dataset_config)

  return make


# ---------------------------------------------------------------------------------------------
# The generated COCO-layout shapes dataset, prepared by the real coco_instances builder.

# 24 train / 10 validation images of 96-160 px; 2 train and 1 validation image without
# annotations, 1 train image with only a crowd region, 2 train images with an extra degenerate
# (0.5 px wide) annotation; crowd regions in about a third of the others.
COCO_SHAPES = dict(num_train=24, num_val=10, empty_train=2, empty_val=1, crowd_only_train=1,
                   degenerate_boxes=2, crowd_fraction=0.3, seed=0)


@pytest.fixture(scope="session")
def coco_shapes_layout(tmp_path_factory):
  """A ``coco_shapes.ShapesCoco``: the COCO 2017 layout written with ``COCO_SHAPES``."""
  from lct_flax.datasets import coco_shapes

  return coco_shapes.write_shapes_coco(str(tmp_path_factory.mktemp("coco_shapes")),
                                       **COCO_SHAPES)


@pytest.fixture(scope="session")
def _prepared_shapes(coco_shapes_layout, tmp_path_factory):
  from lct_flax.detection import data, data_config

  config = data_config.shapes_dataset_config(
      data_dir=str(tmp_path_factory.mktemp("shapes_data")), manual_dir=coco_shapes_layout.root)
  data.prepare_dataset(config)
  return config


@pytest.fixture
def shapes_config(_prepared_shapes):
  """Detection dataset config of ``coco_instances/shapes`` prepared from ``coco_shapes_layout``
  (canvases (128, 160) and (160, 128)). A fresh copy per test: edit it freely."""
  return _prepared_shapes.copy_and_resolve_references()
