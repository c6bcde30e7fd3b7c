"""Noise processes: where a family's noise levels live.

A noise process owns everything the engine needs to know about noise levels,
so that the engine itself knows no family:

* the partition of the level range into B nominal block ranges (the density
  that the partition equalises),
* how gamma widens a block's range for training,
* how a training step draws levels inside its block's range,
* routing (level -> block) and the sampler's grid of levels.

Levels are floats and a larger level is noisier. **Block order** is the one
convention everywhere: block 0 runs first at inference and owns the NOISIEST
range, so `boundaries(B)` descends: block b's nominal range is
[boundaries[b + 1], boundaries[b]], and every [B, 2] array of ranges has
block b's (lo, hi) in row b.

`EDM` is the process of the continuous families (ViT labels, DiT images, the
AR token embeddings): sigma in [sigma_min, sigma_max] under EDM's log-normal.
A masking schedule alpha(t) of masked diffusion (level t in [0, 1]) is
another implementation of the same protocol.
"""

import dataclasses
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from dblocks_jax.diffusion import grids, noise, partition


@runtime_checkable
class NoiseProcess(Protocol):
  """The protocol a noise process implements (see the module docstring)."""

  def boundaries(
    self, num_blocks: int, kind: str = "equiprobable", explicit=None
  ) -> np.ndarray:
    """[num_blocks + 1] descending level boundaries (block order)."""
    ...

  def widen(self, boundaries: np.ndarray, gamma: float) -> np.ndarray:
    """[B, 2] (lo, hi) training ranges, block order, widened by gamma."""
    ...

  def sample(self, key: jax.Array, shape, lo, hi) -> jax.Array:
    """Levels of `shape` drawn inside [lo, hi] (lo and hi may be traced)."""
    ...

  def route(self, levels, boundaries: np.ndarray):
    """levels [...] -> int blocks [...] whose nominal range holds them."""
    ...

  def grid(self, num_steps: int, kind: str = "") -> np.ndarray:
    """[num_steps] sampler levels, noisiest first."""
    ...

  def describe(self) -> dict:
    """JSON-able settings that define the partition (a run's topology)."""
    ...


SIGMA_SAMPLINGS = ("lognormal", "log_uniform")


@dataclasses.dataclass(frozen=True)
class EDM:
  """EDM's sigma (Karras et al. 2022) under the paper's log-normal.

  Attributes:
    sigma_min: lowest noise level (0.002).
    sigma_max: highest noise level (80).
    p_mean: mean of ln(sigma) of the training distribution (-1.2).
    p_std: standard deviation of ln(sigma) (1.2).
    sigma_data: standard deviation of the clean targets (0.5); used by the
      tasks' preconditioning, kept here so that one object holds the process.
    sampling: how a block draws sigma in its range: "lognormal" (the paper:
      the log-normal truncated to the range) or "log_uniform" (every part of
      the range alike; a documented option).
    rho: exponent of the Karras grid (`grid(kind="karras")`).
  """

  sigma_min: float = 0.002
  sigma_max: float = 80.0
  p_mean: float = -1.2
  p_std: float = 1.2
  sigma_data: float = 0.5
  sampling: str = "lognormal"
  rho: float = 7.0

  def __post_init__(self):
    partition.check_sigma_range(self.sigma_min, self.sigma_max)
    if self.p_std <= 0:
      raise ValueError(f"p_std={self.p_std} must be positive (EDM: 1.2).")
    if self.sigma_data <= 0:
      raise ValueError(
        f"sigma_data={self.sigma_data} must be positive (EDM: 0.5)."
      )
    if self.sampling not in SIGMA_SAMPLINGS:
      raise ValueError(
        f"sampling={self.sampling!r} is unknown; choose one of"
        f" {SIGMA_SAMPLINGS}."
      )

  def boundaries(
    self, num_blocks: int, kind: str = "equiprobable", explicit=None
  ) -> np.ndarray:
    """Descending sigma boundaries; `kind` is "equiprobable" (each range
    holds 1/B of the truncated log-normal), "log_uniform" (equal widths in
    ln sigma) or "explicit" (`explicit`, B + 1 values in block order, from
    sigma_max down to sigma_min)."""
    ascending = None
    if kind == "explicit":
      values = np.asarray(explicit if explicit is not None else (), np.float64)
      if values.shape != (num_blocks + 1,):
        raise ValueError(
          f"boundaries={tuple(values.tolist())} has {values.size} values; the"
          f" explicit partition of num_blocks={num_blocks} needs"
          f" {num_blocks + 1}, from sigma_max down to sigma_min."
        )
      if values[0] < values[-1]:
        raise ValueError(
          f"boundaries={tuple(values.tolist())} ascend; give them in block"
          " order (block 0 is the noisiest): from sigma_max down to"
          " sigma_min, e.g. reversed."
        )
      ascending = values[::-1]
    bounds = partition.block_boundaries(
      num_blocks,
      kind,
      self.sigma_min,
      self.sigma_max,
      self.p_mean,
      self.p_std,
      explicit=ascending,
    )
    return bounds[::-1].copy()

  def widen(self, boundaries: np.ndarray, gamma: float) -> np.ndarray:
    """Each range widened by gamma times its log-width on each side."""
    ascending = partition.training_ranges(np.asarray(boundaries)[::-1], gamma)
    return ascending[::-1].copy()

  def sample(self, key: jax.Array, shape, lo, hi) -> jax.Array:
    if self.sampling == "log_uniform":
      return noise.sample_log_uniform(key, shape, lo, hi)
    return noise.sample_truncated_lognormal(
      key, shape, lo, hi, self.p_mean, self.p_std
    )

  def route(self, levels, boundaries: np.ndarray):
    """The official rule (searchsorted right on the ascending edges)."""
    return partition.route(levels, np.asarray(boundaries)[::-1])

  def grid(self, num_steps: int, kind: str = "cdf") -> np.ndarray:
    """ "cdf" (the official DiffusionBlocks grid) or "karras"."""
    return grids.sigma_grid(
      kind or "cdf",
      num_steps,
      self.sigma_min,
      self.sigma_max,
      self.p_mean,
      self.p_std,
      self.rho,
    )

  def describe(self) -> dict:
    """The fields that define the partition (sampling settings excluded)."""
    return {
      "process": "edm",
      "sigma_min": self.sigma_min,
      "sigma_max": self.sigma_max,
      "p_mean": self.p_mean,
      "p_std": self.p_std,
    }
