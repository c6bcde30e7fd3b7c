"""Tests of dblocks_jax.nn.activations: GELU whose backward keeps its input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from dblocks_jax.nn.activations import gelu

X = np.linspace(-12.0, 12.0, 20_001, dtype=np.float32)


def _exact_float64(x):
  x = np.asarray(x, np.float64)
  return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


@pytest.mark.parametrize("approximate", [False, True])
def test_values_and_gradients_match_jax_nn_gelu(approximate):
  x = jnp.asarray(X)
  ref = jax.nn.gelu(x, approximate=approximate)
  np.testing.assert_allclose(gelu(x, approximate), ref, rtol=0, atol=2e-6)

  def loss(f):
    return lambda x: jnp.sum(jnp.sin(f(x)))

  ours = jax.grad(loss(lambda x: gelu(x, approximate)))(x)
  theirs = jax.grad(loss(lambda x: jax.nn.gelu(x, approximate=approximate)))(x)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)


def test_exact_form_is_pytorchs_erf_expression():
  """0.5 x (1 + erf(x / sqrt 2)), checked in float64, tails included."""
  np.testing.assert_allclose(
    np.asarray(gelu(jnp.asarray(X)), np.float64),
    _exact_float64(X),
    rtol=0,
    atol=4e-6,
  )
  assert float(gelu(jnp.float32(-12.0))) == pytest.approx(0.0, abs=1e-6)
  assert float(gelu(jnp.float32(12.0))) == 12.0


@pytest.mark.parametrize("approximate", [False, True])
def test_backward_pass_keeps_only_the_input(approximate):
  """jax.nn.gelu keeps several hidden-sized arrays (erfc, exp, ...)."""
  x = jnp.asarray(X[:64].reshape(8, 8))
  _, ours = jax.vjp(lambda x: gelu(x, approximate), x)
  _, theirs = jax.vjp(lambda x: jax.nn.gelu(x, approximate=approximate), x)

  def kept(vjp_fn):
    return [a for a in jax.tree.leaves(vjp_fn) if a.shape == x.shape]

  assert len(kept(ours)) == 1
  np.testing.assert_array_equal(kept(ours)[0], x)
  assert len(kept(theirs)) >= 2


def test_gelu_keeps_bfloat16():
  x = jnp.asarray(X[:128], jnp.bfloat16)
  y, vjp_fn = jax.vjp(gelu, x)
  (dx,) = vjp_fn(jnp.ones_like(y))
  assert y.dtype == dx.dtype == jnp.bfloat16
