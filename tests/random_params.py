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
    (jax.random.normal(k, x.shape) / np.sqrt(x.shape[0])).astype(x.dtype)
    if x.ndim == 2
    else x
    for k, x in zip(keys, leaves, strict=True)
  ]
  nnx.update(module, jax.tree.unflatten(tree, leaves))
  return module


def randomize_experiment(experiment, seed: int = 0):
  """`randomize` on every part of an experiment's model (shared, then each
  block's, in name order), each from its own seed."""
  model = experiment.model
  groups = [model.shared, *model.blocks]
  parts = [module for g in groups for _, module in sorted(g.items())]
  for i, module in enumerate(parts):
    randomize(module, seed + i)
  return experiment


def random_batch(family, config, seed: int = 0) -> dict:
  """A random training batch of the family's shapes (`batch_spec`): normal
  floats, and labels or tokens in [0, 10) (below every smoke config's
  classes and vocabulary)."""
  rng = np.random.default_rng(seed)
  batch = {}
  for name, spec in family.batch_spec(config).items():
    if np.issubdtype(spec.dtype, np.floating):
      batch[name] = rng.normal(size=spec.shape).astype(spec.dtype)
    else:
      batch[name] = rng.integers(0, 10, size=spec.shape).astype(spec.dtype)
  return batch
