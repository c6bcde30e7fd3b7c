"""Noise-range partitions: boundaries, overlap and routing.

These are the EDM math of `process.EDM`, in ascending sigma order (index 0
is sigma_min), as the method's equations are written. Layer block 0 holds the
first layers and the HIGHEST noise range, so ascending interval j belongs to
layer block `B - 1 - j`; the engine only sees block order, through
`process.EDM` and `blockwise.BlockPlan`. Host-side values are float64 numpy
arrays; `route` also accepts traced arrays.
"""

import jax.numpy as jnp
import numpy as np

from dblocks_jax.diffusion import noise

PARTITIONS = ("equiprobable", "log_uniform", "explicit")


def check_sigma_range(sigma_min: float, sigma_max: float) -> None:
  if not 0 < sigma_min < sigma_max:
    raise ValueError(
      f"sigma_min={sigma_min} and sigma_max={sigma_max}:"
      " need 0 < sigma_min < sigma_max (EDM uses 0.002 and 80)."
    )


def block_boundaries(
  num_blocks: int,
  kind: str = "equiprobable",
  sigma_min: float = 0.002,
  sigma_max: float = 80.0,
  p_mean: float = -1.2,
  p_std: float = 1.2,
  explicit: tuple[float, ...] | None = None,
) -> np.ndarray:
  """The B+1 ascending sigma boundaries of the B noise ranges.

  Args:
    num_blocks: B >= 1.
    kind: "equiprobable" (each interval holds 1/B of the truncated log-normal
      mass; the paper's default), "log_uniform" (equal widths in ln sigma; the
      ablation baseline), or "explicit" (the `explicit` list, ascending).
    sigma_min: lowest noise level.
    sigma_max: highest noise level.
    p_mean: mean of ln(sigma) of the training noise distribution.
    p_std: standard deviation of ln(sigma).
    explicit: for kind "explicit": B+1 ascending values from sigma_min to
      sigma_max.

  Returns:
    boundaries: [B + 1] float64, boundaries[0] = sigma_min,
    boundaries[B] = sigma_max.
  """
  check_sigma_range(sigma_min, sigma_max)
  if num_blocks < 1:
    raise ValueError(f"num_blocks={num_blocks}: need at least 1.")
  if kind == "equiprobable":
    q_min = noise.lognormal_cdf(sigma_min, p_mean, p_std)
    q_max = noise.lognormal_cdf(sigma_max, p_mean, p_std)
    qs = q_min + (q_max - q_min) * np.arange(num_blocks + 1) / num_blocks
    inner = [noise.lognormal_quantile(q, p_mean, p_std) for q in qs[1:-1]]
    bounds = np.array([sigma_min, *inner, sigma_max], np.float64)
  elif kind == "log_uniform":
    bounds = np.exp(
      np.linspace(np.log(sigma_min), np.log(sigma_max), num_blocks + 1)
    )
    bounds[0], bounds[-1] = sigma_min, sigma_max
  elif kind == "explicit":
    bounds = np.asarray(explicit if explicit is not None else (), np.float64)
    if bounds.shape != (num_blocks + 1,):
      raise ValueError(
        f"boundaries={tuple(bounds.tolist())} has {bounds.size} values; the"
        " explicit partition"
        f" of {num_blocks} blocks needs {num_blocks + 1}, from sigma_min to"
        " sigma_max."
      )
    if not (
      np.all(np.diff(bounds) > 0)
      and np.isclose(bounds[0], sigma_min)
      and np.isclose(bounds[-1], sigma_max)
    ):
      raise ValueError(
        f"boundaries={tuple(bounds.tolist())} must run strictly from"
        f" sigma_min={sigma_min} to sigma_max={sigma_max}."
      )
  else:
    raise ValueError(
      f"partition={kind!r} is unknown; choose one of {PARTITIONS}."
    )
  return bounds


def check_gamma(gamma: float) -> None:
  """Raises ValueError unless the overlap gamma is in [0, 0.5]."""
  if not 0.0 <= gamma <= 0.5:
    raise ValueError(
      f"gamma={gamma} is outside [0, 0.5]; the paper uses 0.05"
      " (0.1 for text) and 0 for ablations."
    )


def training_ranges(boundaries: np.ndarray, gamma: float) -> np.ndarray:
  """The B training intervals, widened by the overlap gamma.

  Each nominal interval [lo, hi] becomes [lo / a, hi * a] with
  a = (hi / lo)^gamma (gamma times its log-width on each side), clipped to
  [sigma_min, sigma_max]. Inference never uses the widened ranges.

  Args:
    boundaries: [B + 1] ascending, from `block_boundaries`.
    gamma: overlap in [0, 0.5].

  Returns:
    ranges: [B, 2] float64 (lo, hi) pairs in the same ascending order.
  """
  check_gamma(gamma)
  bounds = np.asarray(boundaries, np.float64)
  lo, hi = bounds[:-1], bounds[1:]
  widen = (hi / lo) ** gamma
  lo_w = np.maximum(lo / widen, bounds[0])
  hi_w = np.minimum(hi * widen, bounds[-1])
  return np.stack([lo_w, hi_w], axis=-1)


def route(sigma, boundaries):
  """The layer block whose NOMINAL interval contains sigma.

  Same rule as the official code: bucket = searchsorted(right) - 1, clipped,
  then reversed so that the highest-noise interval is layer block 0.

  Args:
    sigma: scalar or [...] array (numpy or jax, may be traced).
    boundaries: [B + 1] ascending.

  Returns:
    block: int array of sigma's shape, in [0, B).
  """
  num_blocks = len(boundaries) - 1
  xp = jnp if not isinstance(sigma, (float, int, np.ndarray)) else np
  bucket = xp.searchsorted(xp.asarray(boundaries), sigma, side="right") - 1
  bucket = xp.clip(bucket, 0, num_blocks - 1)
  return num_blocks - 1 - bucket
