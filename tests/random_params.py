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


def block_loss_and_gradients(config, block: int = 0):
  """(loss, gradients) of `block`'s loss (of the whole network when the
  config trains end to end) on random parameters, a random batch and the
  key key(1): the shared and block parameters' gradients, jitted."""
  from dblocks_jax import families
  from dblocks_jax.blockwise import parts as parts_lib
  from dblocks_jax.blockwise import steps

  family = families.get(config.model.name)
  experiment = randomize_experiment(family.build(config))
  graphdefs, shared, blocks, fixed = parts_lib.split(experiment.model)
  groups = {"shared": shared, "block": blocks[block] if blocks else {}}
  groups = {n: g for n, g in groups.items() if g and jax.tree.leaves(g)}
  loss_fn = steps.loss_of(experiment.task, graphdefs, experiment.plan, block)
  rest = {n: g["rest"] for n, g in groups.items()}
  batch = random_batch(family, config)

  def loss(params):
    return loss_fn(params, rest, fixed, batch, jax.random.key(1), block)[0]

  params = {n: g["params"] for n, g in groups.items()}
  return jax.jit(jax.value_and_grad(loss))(params)


def assert_trees_close(ours, ref, rtol: float = 1e-4) -> None:
  """Two pytrees of arrays agree leaf by leaf, to `rtol` and to 1e-5 of
  each reference leaf's largest magnitude (float rounding of a changed
  computation order)."""
  leaves, ref_leaves = jax.tree.leaves(ours), jax.tree.leaves(ref)
  assert len(leaves) == len(ref_leaves)
  for a, b in zip(leaves, ref_leaves, strict=True):
    scale = float(np.abs(b).max()) + 1e-12
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-5 * scale)
