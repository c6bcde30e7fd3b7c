"""Shared fixtures: tiny configs and experiments that run in seconds."""

import copy

import jax
import numpy as np
import pytest

from configs import quickstart

# Eight fake CPU devices for the mesh tests (before JAX starts a backend).
jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture
def smoke_config():
  """The quickstart's smoke config: 3 layers, B=3, bundled digits."""
  return copy.deepcopy(quickstart.get_config("smoke"))


def snapshot(tree):
  """A host copy of every leaf, safe from buffer donation."""
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def assert_trees_equal(a, b):
  """Bit-identical pytrees (same structure, same values)."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
