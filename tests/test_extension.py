"""Extending the package from one file: a test-only attention block (ECA: a 1-D convolution over
the pooled channels) and a test-only box head (mmdetection's Shared4Conv1FCBBoxHead), each
registered here alone, train a step, export and load back."""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lct_flax import attention
from lct_flax import blocks
from lct_flax import config_schema
from lct_flax import export
from lct_flax import loop
from lct_flax import pixels
from lct_flax import schema_rules
from lct_flax.detection import head_registry
from lct_flax.tasks.classification import TASK as CLASSIFICATION
from lct_flax.tasks.detection import TASK as DETECTION
from test_detection_training import tiny_config
from tiny import tiny_demo_config


class ECA(attention.ChannelAttention):
  """Efficient Channel Attention (Wang et al., CVPR 2020): sigmoid of a 1-D convolution of
  `kernel_size` over the pooled channels, no reduction."""
  kernel_size: int = 3

  @nn.compact
  def gate(self, context: jax.Array) -> jax.Array:
    z = context.astype(jnp.float32)[..., None]                      # (N, C, 1)
    a = nn.Conv(1, (self.kernel_size,), padding="SAME", use_bias=False, dtype=jnp.float32,
                name="conv")(z)[..., 0]
    return jax.nn.sigmoid(a)


@pytest.fixture
def eca_registered():
  blocks.register(blocks.Block(name="eca", module=ECA, module_name="eca", label="ECA",
                               options={"kernel_size": schema_rules.Integer(minimum=1)}))
  yield
  del blocks.BLOCKS["eca"]


def test_a_block_registered_from_a_test_file_trains_exports_and_loads(eca_registered,
                                                                       digits_config, tmp_path):
  config = tiny_demo_config(digits_config.data_dir, num_train_steps=1)
  config.model.attention = "eca"
  config.model.attention_kwargs = {"kernel_size": 5}
  config_schema.validate(config)
  result = CLASSIFICATION.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 1 and 0 <= result["eval_top1"] <= 1

  path = export.export_workdir(str(tmp_path / "run"), str(tmp_path / "export"))
  model, variables, exported = export.load(path)
  assert exported.model.attention == "eca" and exported.model.attention_kwargs.kernel_size == 5
  kernels = [block["eca"]["conv"]["kernel"] for name, block in variables["params"].items()
             if name.startswith("layer")]
  assert len(kernels) == 8 and all(k.shape == (5, 1, 1) for k in kernels)
  state = CLASSIFICATION.restore_state(config, str(tmp_path / "run"))
  np.testing.assert_array_equal(kernels[0], state.params["layer1_0"]["eca"]["conv"]["kernel"])
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)
  logits = model.apply(variables, pixels.normalize(images, exported.dataset.mean,
                                                   exported.dataset.std), train=False)
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


def test_the_blocks_options_are_checked_from_their_registration(eca_registered):
  config = tiny_demo_config("/nowhere")
  config.model.attention = "eca"
  config.model.attention_kwargs = {"kernel_size": 0}
  with pytest.raises(config_schema.ConfigError, match=r"kernel_size=0 .* an integer >= 1"):
    config_schema.validate(config)
  config.model.attention_kwargs = {"groups": 4}
  with pytest.raises(config_schema.ConfigError, match=r"attention 'eca' has no option 'groups' "
                                                      r"\(kernel_size\)"):
    config_schema.validate(config)


class Shared4Conv1FC(nn.Module):
  """mmdetection's Shared4Conv1FCBBoxHead: four 3x3 convolutions of `hidden` channels + ReLU over
  each RoI's features, one shared fully connected layer of `hidden` + ReLU, then class logits
  and box deltas."""
  num_classes: int
  class_agnostic: bool = False
  hidden: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, roi_features: jax.Array) -> tuple[jax.Array, jax.Array]:
    n, r = roi_features.shape[:2]
    x = roi_features.reshape(n * r, *roi_features.shape[2:])
    for i in range(4):
      x = nn.relu(nn.Conv(self.hidden, (3, 3), padding=1, dtype=self.dtype, name=f"conv_{i}")(x))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc")(x.reshape(n, r, -1)))
    logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="cls")(x)
    sets = 1 if self.class_agnostic else self.num_classes + 1
    deltas = nn.Dense(4 * sets, dtype=self.dtype, name="reg")(x)
    return logits.astype(jnp.float32), deltas.astype(jnp.float32).reshape(n, r, sets, 4)


@pytest.fixture
def box_head_registered():
  head_registry.register(head_registry.Head(name="shared_4conv_1fc", role=head_registry.BOX,
                                            module=Shared4Conv1FC))
  yield
  del head_registry.HEADS["shared_4conv_1fc"]


def test_a_box_head_registered_from_a_test_file_trains_exports_and_loads(
    box_head_registered, shapes_config, tmp_path):
  config = tiny_config(shapes_config, num_train_steps=1)
  config.model.box_head = "shared_4conv_1fc"
  DETECTION.check_config(config)
  workdir = str(tmp_path / "run")
  # The run's COCO evaluation is left out (the export's detections are checked below).
  result = loop.run(lambda: dataclasses.replace(
      DETECTION.training(config, workdir), evaluate=lambda state: {},
      describe_eval=lambda metrics: ""), workdir)
  assert result["step"] == 1

  path = export.export_workdir(str(tmp_path / "run"), str(tmp_path / "export"))
  model, variables, exported = export.load(path)
  assert exported.model.box_head == "shared_4conv_1fc"
  head = variables["params"]["box_heads_0"]
  assert sorted(head) == ["cls", "conv_0", "conv_1", "conv_2", "conv_3", "fc", "reg"]
  assert head["conv_0"]["kernel"].shape == (3, 3, 16, 32) and head["fc"]["kernel"].shape[1] == 32
  state = DETECTION.restore_state(config, str(tmp_path / "run"))
  np.testing.assert_array_equal(head["conv_3"]["kernel"],
                                state.params["box_heads_0"]["conv_3"]["kernel"])
  images = np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3), np.uint8)
  detections = jax.jit(model.apply)(variables, images, np.array([[64, 80]], np.int32))
  assert detections.boxes.shape == (1, 100, 4) and np.all(np.isfinite(detections.scores))


def test_an_unregistered_box_head_is_refused_in_one_line(shapes_config):
  config = tiny_config(shapes_config)
  config.model.box_head = "shared_4conv_1fc"
  with pytest.raises(config_schema.ConfigError, match=r"model.box_head='shared_4conv_1fc' .* "
                                                      r"one of 'shared_2fc'"):
    config_schema.validate(config)
