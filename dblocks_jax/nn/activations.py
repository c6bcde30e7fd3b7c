"""GELU with a backward pass that keeps only its input.

`jax.nn.gelu` differentiated by JAX keeps the intermediates of its forward
pass for the backward one (for the exact form: erfc's pieces, each the size
of the MLP's hidden activations), and XLA:CPU computes erfc in several
passes over memory. Here the forward pass is one elementwise expression, the
backward pass recomputes the derivative from the input, and what the
backward pass holds per MLP is the input alone: the MLP's hidden
activations are kept twice (GELU's input and fc2's input), as in PyTorch.
An optimisation barrier in the backward pass stops XLA from reusing the
forward pass's erf there (it would keep erf's output alive through the
whole forward pass: a third hidden-sized array per MLP).

The exact form is 0.5 x (1 + erf(x / sqrt 2)), the expression PyTorch's
`nn.GELU()` evaluates; the approximate form is the tanh one
(`nn.GELU(approximate="tanh")`). Both agree with `jax.nn.gelu` to float32
rounding (tested).
"""

import functools
import math

import jax
import jax.numpy as jnp

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu(x: jax.Array, approximate: bool) -> jax.Array:
  if approximate:
    inner = _SQRT_2_OVER_PI * (x + _TANH_CUBIC * x**3)
    return 0.5 * x * (1.0 + jnp.tanh(inner))
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


def _gelu_slope(x: jax.Array, approximate: bool) -> jax.Array:
  """d gelu(x) / dx, elementwise."""
  if approximate:
    t = jnp.tanh(_SQRT_2_OVER_PI * (x + _TANH_CUBIC * x**3))
    d_inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_CUBIC * x**2)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner
  cdf = 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
  pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
  return cdf + x * pdf


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
  """GELU of x (any shape): exact (erf) or the tanh approximation."""
  return _gelu(x, approximate)


def _gelu_forward(x, approximate):
  return gelu(x, approximate), x


def _gelu_backward(approximate, x, g):
  # The barrier keeps XLA from sharing erf (or tanh) with the forward pass,
  # which would keep a third activation-sized array alive until here.
  x = jax.lax.optimization_barrier(x)
  return ((g * _gelu_slope(x, approximate)).astype(x.dtype),)


gelu.defvjp(_gelu_forward, _gelu_backward)
