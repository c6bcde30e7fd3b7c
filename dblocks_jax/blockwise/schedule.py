"""Block schedules: which block each update of a device group trains.

The block is a pure function of (seed, position), drawn once per optimizer
step (kept through gradient accumulation), so runs are reproducible and a
resumed run continues the same sequence. A run on G device groups gives each
group its own schedule over the blocks it holds.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("uniform", "round_robin")


class BlockSchedule:
  """Draws blocks for successive updates.

  Args:
    kind: "uniform" (a uniformly random block per step; the paper's default)
      or "round_robin" (the blocks in turn).
    blocks: the blocks to choose from (e.g. all B, or a group's blocks).
    seed: schedule seed.
  """

  def __init__(self, kind: str, blocks, seed: int = 0):
    if kind not in SCHEDULES:
      raise ValueError(
        f"schedule={kind!r} is unknown; choose one of {SCHEDULES}."
      )
    blocks = tuple(int(b) for b in blocks)
    if not blocks or len(set(blocks)) != len(blocks):
      raise ValueError(f"blocks={list(blocks)} must be distinct, at least one.")
    self.kind = kind
    self.blocks = np.array(sorted(blocks))
    self.key = jax.random.key(seed)

  def __call__(self, start: int, count: int) -> np.ndarray:
    """The blocks of positions [start, start + count): [count] int."""
    positions = np.arange(start, start + count)
    if self.kind == "round_robin" or len(self.blocks) == 1:
      return self.blocks[positions % len(self.blocks)]
    idx = _uniform_indices(self.key, jnp.asarray(positions), len(self.blocks))
    return self.blocks[np.asarray(idx)]


@functools.partial(jax.jit, static_argnums=2)
def _uniform_indices(key, positions, n):
  draw = lambda s: jax.random.randint(jax.random.fold_in(key, s), (), 0, n)
  return jax.vmap(draw)(positions)
