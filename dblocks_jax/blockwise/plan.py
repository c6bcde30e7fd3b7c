"""The block plan: L layers -> B contiguous blocks -> B noise ranges.

Block order everywhere: block 0 owns the first layers and the noisiest range
and runs first at inference; every per-block array has block b in row b.
"""

import dataclasses

import numpy as np

from dblocks_jax.diffusion.process import NoiseProcess

SHARING_MODES = ("shared", "independent")


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  """Which layers each block owns and which noise range it denoises.

  Build it with `BlockPlan.create`; the arrays are in block order.

  Attributes:
    noise: the noise process (e.g. `EDM()`).
    layers_per_block: [B] layer counts, summing to the network's depth.
    boundaries: [B + 1] descending levels; block b's nominal range (the one
      routing uses) is [boundaries[b + 1], boundaries[b]].
    train_ranges: [B, 2] (lo, hi) per block: the nominal range widened by
      gamma, what the block trains on.
    gamma: the overlap that widened the ranges.
    partition: how the boundaries were chosen ("equiprobable", ...).
  """

  noise: NoiseProcess
  layers_per_block: tuple[int, ...]
  boundaries: np.ndarray
  train_ranges: np.ndarray
  gamma: float = 0.0
  partition: str = "equiprobable"

  @classmethod
  def create(
    cls,
    noise: NoiseProcess,
    *,
    num_layers: int,
    num_blocks: int,
    gamma: float = 0.05,
    partition: str = "equiprobable",
    layer_distribution=(),
    boundaries=None,
  ) -> "BlockPlan":
    """The plan of a network of `num_layers` layers in `num_blocks` blocks.

    Args:
      noise: the noise process whose level range is partitioned.
      num_layers: L, the depth of the network.
      num_blocks: B, 1 <= B <= L.
      gamma: overlap: each training range is widened by gamma times its
        width (in the process's own measure) on each side; 0.05 is the
        paper's default, 0 its ablations.
      partition: "equiprobable" (each range holds 1/B of the noise
        distribution, the paper), "log_uniform", or "explicit".
      layer_distribution: layers per block in block order, e.g. (2, 4, 6);
        empty for an equal split.
      boundaries: for partition="explicit": B + 1 levels in block order
        (descending, from the noisiest).

    Raises:
      ValueError: a count, the distribution, gamma or the boundaries cannot
        work; the message names the argument.
      TypeError: `noise` is not a noise process.
    """
    if not isinstance(noise, NoiseProcess):
      raise TypeError(
        f"noise={noise!r} is not a noise process; pass e.g."
        " dblocks_jax.EDM() (or an object with boundaries, widen, sample,"
        " route, grid and describe)."
      )
    counts = layer_distribution_of(num_layers, num_blocks, layer_distribution)
    edges = np.asarray(
      noise.boundaries(num_blocks, partition, boundaries), np.float64
    )
    return cls(
      noise=noise,
      layers_per_block=counts,
      boundaries=edges,
      train_ranges=np.asarray(noise.widen(edges, gamma), np.float64),
      gamma=float(gamma),
      partition=partition,
    )

  @property
  def num_blocks(self) -> int:
    return len(self.layers_per_block)

  @property
  def num_layers(self) -> int:
    return sum(self.layers_per_block)

  def nominal_range(self, block: int) -> tuple[float, float]:
    """(lo, hi) of block `block`'s nominal (routing) range."""
    return float(self.boundaries[block + 1]), float(self.boundaries[block])

  def route(self, levels):
    """levels -> the block whose nominal range contains each level."""
    return self.noise.route(levels, self.boundaries)

  def grid(self, num_steps: int = 0, kind: str = ""):
    """(levels [N], blocks [N]) of a sampler of N steps (0 = B steps).

    Each level goes to the block that owns it, or, for a process whose
    steps span intervals (masking: `routing_levels`), the block that owns
    the middle of its step."""
    levels = self.noise.grid(num_steps or self.num_blocks, kind)
    routing_levels = getattr(self.noise, "routing_levels", None)
    at = levels if routing_levels is None else routing_levels(levels)
    return levels, np.asarray(self.route(at))

  def topology(self) -> dict:
    """What a resumed run must agree on (recorded in every checkpoint)."""
    return {
      "num_blocks": self.num_blocks,
      "layers_per_block": list(self.layers_per_block),
      "boundaries": [round(float(b), 10) for b in self.boundaries],
      "noise": self.noise.describe(),
    }


def layer_distribution_of(
  num_layers: int, num_blocks: int, distribution=()
) -> tuple[int, ...]:
  """Validates and returns the per-block layer counts.

  Args:
    num_layers: L.
    num_blocks: B.
    distribution: explicit counts in block order (e.g. [2, 4, 6]); empty =
      equal split.
  """
  if num_blocks < 1:
    raise ValueError(f"num_blocks={num_blocks}: need at least 1.")
  if num_blocks > num_layers:
    raise ValueError(
      f"num_blocks={num_blocks} is larger than num_layers={num_layers};"
      " every block needs at least one layer."
    )
  if distribution:
    counts = tuple(int(c) for c in distribution)
    if len(counts) != num_blocks:
      raise ValueError(
        f"layer_distribution={list(counts)} has {len(counts)} entries but"
        f" num_blocks={num_blocks}; give one count per block."
      )
    if sum(counts) != num_layers or min(counts) < 1:
      raise ValueError(
        f"layer_distribution={list(counts)} sums to {sum(counts)} but"
        f" num_layers={num_layers}; counts must be >= 1 and sum to L."
      )
    return counts
  if num_layers % num_blocks:
    raise ValueError(
      f"num_layers={num_layers} does not split evenly into"
      f" num_blocks={num_blocks}; set layer_distribution (e.g. [3, 4, 3])."
    )
  return (num_layers // num_blocks,) * num_blocks


def check_ranges(train_ranges, num_blocks: int) -> np.ndarray:
  """`train_ranges` as a [B, 2] array in block order, or a ValueError.

  Catches the easy mistake of passing ranges in ascending order (the paper's
  equations index from the lowest noise): row 0 must be the noisiest block,
  so the rows' midpoints descend. Midpoints are geometric when every bound
  is positive (EDM's sigmas, widened in log space) and arithmetic otherwise
  (masking's times in [0, 1], widened linearly; the lowest range starts at
  t = 0).
  """
  ranges = np.asarray(train_ranges, np.float64)
  if ranges.shape != (num_blocks, 2):
    raise ValueError(
      f"train_ranges has shape {ranges.shape}; need [{num_blocks}, 2]"
      " (lo, hi) rows, one per block. Use BlockPlan.train_ranges."
    )
  if np.any(ranges[:, 0] >= ranges[:, 1]):
    raise ValueError(
      f"train_ranges={ranges.tolist()} has a row with lo >= hi; each row is"
      " (lo, hi)."
    )
  # Midpoints, not the ends: the overlap gamma widens each range by a share
  # of its own (log-)width, so a wide lowest range can reach above the upper
  # end of the narrow range before it.
  scaled = np.log(ranges) if np.all(ranges > 0) else ranges
  midpoints = scaled.mean(axis=1)
  if num_blocks > 1 and np.any(np.diff(midpoints) >= 0):
    raise ValueError(
      f"train_ranges={ranges.tolist()} is not in block order: block 0 is the"
      " noisiest, so the rows' midpoints must descend. Use"
      " BlockPlan.train_ranges (ascending ranges reversed: ranges[::-1])."
    )
  return ranges
