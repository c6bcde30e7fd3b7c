"""Descending sigma grids for sampling, for any number of steps.

Grids are computed from the config at sampling time, never stored in a
checkpoint (the official code stores them, which fixes the number of steps).

Every grid starts at sigma_max, where the sampler's initial noise is drawn.
N >= 2 points end at sigma_min; one point is sigma_max alone: one denoising
step from pure noise (the network's estimate at sigma_max). A deliberate
departure from the official code, whose one-point CDF grid is [sigma_min]:
there a one-block model (B = 1 at its default of B steps) or a one-step
sampler reads noise of scale sigma_max as if it were nearly clean and
predicts at chance.
"""

import numpy as np

from dblocks_jax.diffusion import noise, partition

GRIDS = ("cdf", "karras")


def cdf_sigmas(
  num_steps: int,
  sigma_min: float = 0.002,
  sigma_max: float = 80.0,
  p_mean: float = -1.2,
  p_std: float = 1.2,
) -> np.ndarray:
  """N points equally spaced in the truncated log-normal CDF, descending.

  The official DiffusionBlocks grid: the first point is sigma_max, the last
  sigma_min, and each block is routed about N/B steps. N = 1 is [sigma_max].

  Returns:
    sigmas: [num_steps] float64, descending.
  """
  _check_steps(num_steps)
  partition.check_sigma_range(sigma_min, sigma_max)
  q_min = noise.lognormal_cdf(sigma_min, p_mean, p_std)
  q_max = noise.lognormal_cdf(sigma_max, p_mean, p_std)
  if num_steps == 1:
    return np.array([sigma_max], np.float64)
  qs = np.linspace(q_max, q_min, num_steps)[1:-1]  # Ends are exact below.
  inner = [noise.lognormal_quantile(q, p_mean, p_std) for q in qs]
  return np.array([sigma_max, *inner, sigma_min], np.float64)


def karras_sigmas(
  num_steps: int,
  sigma_min: float = 0.002,
  sigma_max: float = 80.0,
  rho: float = 7.0,
) -> np.ndarray:
  """The EDM rho-spaced grid, descending from sigma_max to sigma_min
  (N = 1: [sigma_max])."""
  _check_steps(num_steps)
  partition.check_sigma_range(sigma_min, sigma_max)
  if num_steps == 1:
    return np.array([sigma_max], np.float64)
  ramp = np.linspace(0.0, 1.0, num_steps)
  inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
  return (inv_max + ramp * (inv_min - inv_max)) ** rho


def sigma_grid(
  kind: str,
  num_steps: int,
  sigma_min: float = 0.002,
  sigma_max: float = 80.0,
  p_mean: float = -1.2,
  p_std: float = 1.2,
  rho: float = 7.0,
) -> np.ndarray:
  """Dispatches on `kind` ("cdf" or "karras")."""
  if kind == "cdf":
    return cdf_sigmas(num_steps, sigma_min, sigma_max, p_mean, p_std)
  if kind == "karras":
    return karras_sigmas(num_steps, sigma_min, sigma_max, rho)
  raise ValueError(f"grid={kind!r} is unknown; choose one of {GRIDS}.")


def _check_steps(num_steps: int) -> None:
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps}: need at least 1.")
