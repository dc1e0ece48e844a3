"""Extending the package from one file: a test-only attention block (ECA: a 1-D convolution over
the pooled channels) registered here alone trains a step, exports and loads back."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lct_flax import attention
from lct_flax import blocks
from lct_flax import config_schema
from lct_flax import export
from lct_flax import pixels
from lct_flax import schema_rules
from lct_flax.tasks.classification import TASK as CLASSIFICATION
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
