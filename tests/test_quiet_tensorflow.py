"""The command-line tools' TensorFlow import: no banners (test_reliability checks the commands'
consoles), and Keras not loaded at start, yet `tf.keras` still usable."""

import subprocess
import sys

from child_env import child_environment

SCRIPT = """
import sys
from lct_flax import quiet_tensorflow
quiet_tensorflow.install()
import tensorflow as tf
import tensorflow_datasets
print("keras loaded at start:", "keras" in sys.modules)
print("tf.keras layer:", tuple(tf.keras.layers.Dense(3)(tf.ones((1, 2))).shape))
"""


def test_tensorflow_starts_without_keras_and_tf_keras_still_loads():
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=child_environment(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "keras loaded at start: False" in result.stdout
  assert "tf.keras layer: (1, 3)" in result.stdout
