"""The block plan: L layers -> B contiguous blocks -> B noise ranges."""

import dataclasses

import numpy as np

from dblocks_jax import diffusion
from dblocks_jax.errors import ConfigError

SHARING_MODES = ("shared", "independent")


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  """Which layers each block owns and which noise range it denoises.

  Block 0 owns the first layers and the highest noise range.

  Attributes:
    layers_per_block: [B] layer counts, summing to num_layers.
    boundaries: [B + 1] ascending nominal boundaries (routing).
    train_ranges: [B, 2] widened (lo, hi) per LAYER block (row b = block b).
  """

  layers_per_block: tuple[int, ...]
  boundaries: np.ndarray
  train_ranges: np.ndarray

  @property
  def num_blocks(self) -> int:
    return len(self.layers_per_block)

  @property
  def num_layers(self) -> int:
    return sum(self.layers_per_block)

  def layer_range(self, block: int) -> tuple[int, int]:
    start = sum(self.layers_per_block[:block])
    return start, start + self.layers_per_block[block]

  def route(self, sigma):
    """sigma -> the block whose nominal interval contains it."""
    return diffusion.route(sigma, self.boundaries)

  def topology(self) -> dict:
    """What a resumed run must agree on (recorded in every checkpoint)."""
    return {
      "num_blocks": self.num_blocks,
      "layers_per_block": list(self.layers_per_block),
      "boundaries": [round(float(b), 10) for b in self.boundaries],
    }


def layer_distribution(
  num_layers: int, num_blocks: int, distribution=()
) -> tuple[int, ...]:
  """Validates and returns the per-block layer counts.

  Args:
    num_layers: L.
    num_blocks: B.
    distribution: explicit counts (e.g. [2, 4, 6]); empty = equal split.
  """
  if num_blocks < 1:
    raise ConfigError(f"blocks.num_blocks={num_blocks}: need at least 1.")
  if num_blocks > num_layers:
    raise ConfigError(
      f"blocks.num_blocks={num_blocks} is larger than"
      f" model.num_layers={num_layers}; every block needs at least one layer."
    )
  if distribution:
    counts = tuple(int(c) for c in distribution)
    if len(counts) != num_blocks:
      raise ConfigError(
        f"blocks.layer_distribution={list(counts)} has {len(counts)} entries"
        f" but blocks.num_blocks={num_blocks}; give one count per block."
      )
    if sum(counts) != num_layers or min(counts) < 1:
      raise ConfigError(
        f"blocks.layer_distribution={list(counts)} sums to {sum(counts)} but"
        f" model.num_layers={num_layers}; counts must be >= 1 and sum to L."
      )
    return counts
  if num_layers % num_blocks:
    raise ConfigError(
      f"model.num_layers={num_layers} does not split evenly into"
      f" blocks.num_blocks={num_blocks}; set blocks.layer_distribution"
      " (e.g. [3, 4, 3])."
    )
  return (num_layers // num_blocks,) * num_blocks


def from_config(config) -> BlockPlan:
  """The plan of `config.model.num_layers` and `config.blocks`/`diffusion`."""
  b, d = config.blocks, config.diffusion
  if b.sharing not in SHARING_MODES:
    raise ConfigError(
      f"blocks.sharing={b.sharing!r} is unknown; choose one of {SHARING_MODES}."
    )
  counts = layer_distribution(
    config.model.num_layers, b.num_blocks, tuple(b.layer_distribution)
  )
  bounds = diffusion.block_boundaries(
    b.num_blocks,
    b.partition,
    d.sigma_min,
    d.sigma_max,
    d.p_mean,
    d.p_std,
    explicit=tuple(b.boundaries) or None,
  )
  ranges_ascending = diffusion.training_ranges(bounds, b.gamma)
  return BlockPlan(
    layers_per_block=counts,
    boundaries=bounds,
    train_ranges=ranges_ascending[::-1].copy(),
  )
