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

`gelu` is a `jax.custom_jvp`, so it also differentiates in forward mode
(`jax.jvp`, `jax.linearize`, Hessian-vector products). Its tangent
slope(x) t is `slope_times_p`, a primitive linear in t: reverse mode
linearizes, then transposes it, and since no function of x is computed for
the tangent in the forward pass, what it keeps is x alone, under every remat
policy; the transpose recomputes the slope from x behind the barrier, the
backward pass above. (A tangent computed under `jax.checkpoint` keeps x too,
except inside a layer checkpointed with `everything_saveable`, which then
keeps the slope, computed in the forward pass.) The primitive's derivative
in x is plain autodiff of the slope (second order).

The exact form is 0.5 x (1 + erf(x / sqrt 2)), the expression PyTorch's
`nn.GELU()` evaluates; the approximate form is the tanh one
(`nn.GELU(approximate="tanh")`). Both agree with `jax.nn.gelu` to float32
rounding (tested).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.interpreters import ad, batching

from dblocks_jax.nn import primitives

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


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
  """GELU of x (any shape): exact (erf) or the tanh approximation.

  Differentiable in both modes: the tangent is slope(x) t
  (`slope_times_p`), whose transpose keeps only x and recomputes the slope
  in the backward pass."""
  return _gelu(x, approximate)


@gelu.defjvp
def _gelu_jvp(approximate, primals, tangents):
  (x,), (t,) = primals, tangents
  tangent = slope_times_p.bind(x, t, approximate=approximate)
  return gelu(x, approximate), tangent


def _slope_times(x, t, *, approximate):
  """slope(x) t: x and t of one shape -> t's shape and dtype."""
  return (t * _gelu_slope(x, approximate)).astype(t.dtype)


def _abstract_eval(x, t, *, approximate):
  del approximate
  if x.shape != t.shape:
    raise TypeError(f"x {x.shape} and t {t.shape} differ in shape.")
  return jax.core.ShapedArray(t.shape, t.dtype)


def _jvp_x(tx, x, t, *, approximate):
  """The derivative along x (second order: Hessian-vector products)."""
  slope = functools.partial(_gelu_slope, approximate=approximate)
  _, dslope = jax.jvp(slope, (x,), (tx,))
  return (t * dslope).astype(t.dtype)


def _jvp_t(tt, x, t, *, approximate):
  del t
  return slope_times_p.bind(x, tt, approximate=approximate)


def _transpose(g, x, t, *, approximate):
  """The backward pass: g slope(x), the slope recomputed from x."""
  if ad.is_undefined_primal(x):
    raise ValueError("slope(x) t is linear in t only.")
  if type(g) is ad.Zero:
    return None, ad.Zero(t.aval.to_ct_aval())
  # The barrier keeps XLA from sharing erf (or tanh) with the forward pass,
  # which would keep a third activation-sized array alive until here.
  x = jax.lax.optimization_barrier(x)
  return None, _slope_times(x, g, approximate=approximate)


def _batch(args, dims, *, approximate):
  size = next(
    a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None
  )
  x, t = (
    batching.bdim_at_front(a, d, size) for a, d in zip(args, dims, strict=True)
  )
  return slope_times_p.bind(x, t, approximate=approximate), 0


# GELU's tangent slope(x) t, linear in t. As a primitive, reverse mode
# (linearize, then transpose) keeps x alone whatever the remat policy: no
# function of x is computed in the forward pass for the backward one.
slope_times_p = primitives.lax_primitive(
  "dblocks_gelu_slope_times", _slope_times, _abstract_eval, _batch
)
ad.defjvp(slope_times_p, _jvp_x, _jvp_t)
ad.primitive_transposes[slope_times_p] = _transpose
