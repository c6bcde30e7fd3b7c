"""Random parameters for tests of untrained modules."""

import jax
import numpy as np
from flax import nnx


def randomize(module, seed: int):
  """Random N(0, 1/fan_in) kernels and tables (a fresh model's
  zero-initialised adaLN and head would make every test trivially pass);
  norm scales and biases stay as initialised."""
  state = nnx.state(module, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [
    jax.random.normal(k, x.shape) / np.sqrt(x.shape[0]) if x.ndim == 2 else x
    for k, x in zip(keys, leaves, strict=True)
  ]
  nnx.update(module, jax.tree.unflatten(tree, leaves))
  return module
