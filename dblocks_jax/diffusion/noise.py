"""The log-normal noise distribution of EDM, truncated to a sigma interval.

ln(sigma) ~ N(p_mean, p_std^2), restricted to [lo, hi] and renormalised
(method_spec 1.1 and 1.6). Sampling is by inverse CDF. Intervals in the upper
half of the distribution are sampled through the mirrored tail, so that float32
keeps its precision near sigma_max (Phi(4.65) rounds to 1 in float32).
"""

import statistics

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import special

_STANDARD_NORMAL = statistics.NormalDist()


def lognormal_cdf(sigma: float, p_mean: float, p_std: float) -> float:
  """P(ln s <= ln sigma) in float64, for host-side boundaries and grids."""
  return _STANDARD_NORMAL.cdf((np.log(sigma) - p_mean) / p_std)


def lognormal_quantile(q: float, p_mean: float, p_std: float) -> float:
  """Inverse of `lognormal_cdf`, in float64."""
  return float(np.exp(p_mean + p_std * _STANDARD_NORMAL.inv_cdf(q)))


def sample_truncated_lognormal(
  key: jax.Array,
  shape: tuple[int, ...],
  lo: jax.Array | float,
  hi: jax.Array | float,
  p_mean: float = -1.2,
  p_std: float = 1.2,
) -> jax.Array:
  """Draws sigma from the log-normal restricted to [lo, hi].

  Args:
    key: PRNG key.
    shape: output shape, e.g. `(batch,)`.
    lo: lower end of the interval (may be traced).
    hi: upper end of the interval (may be traced), `hi > lo`.
    p_mean: mean of ln(sigma).
    p_std: standard deviation of ln(sigma).

  Returns:
    sigma: `shape` float32, every value in [lo, hi].
  """
  lo = jnp.asarray(lo, jnp.float32)
  hi = jnp.asarray(hi, jnp.float32)
  a = (jnp.log(lo) - p_mean) / p_std
  b = (jnp.log(hi) - p_mean) / p_std
  # Work in whichever tail keeps the CDF values small (and thus precise).
  mirrored = (a + b) > 0
  a_m = jnp.where(mirrored, -b, a)
  b_m = jnp.where(mirrored, -a, b)
  u = jax.random.uniform(
    key, shape, minval=special.ndtr(a_m), maxval=special.ndtr(b_m)
  )
  x = special.ndtri(u)
  x = jnp.where(mirrored, -x, x)
  return jnp.clip(jnp.exp(p_mean + p_std * x), lo, hi)


def sample_log_uniform(
  key: jax.Array,
  shape: tuple[int, ...],
  lo: jax.Array | float,
  hi: jax.Array | float,
) -> jax.Array:
  """Draws sigma with ln(sigma) uniform on [ln lo, ln hi] (may be traced).

  Not the paper's distribution: an option (`blocks.sigma_sampling`) that
  gives every part of a block's range the same share of its training.
  """
  log_lo = jnp.log(jnp.asarray(lo, jnp.float32))
  log_hi = jnp.log(jnp.asarray(hi, jnp.float32))
  u = jax.random.uniform(key, shape)
  return jnp.clip(jnp.exp(log_lo + u * (log_hi - log_lo)), lo, hi)
