"""lct-flax: Linear Context Transform (LCT) blocks and channel-attention ResNets in JAX/Flax."""
