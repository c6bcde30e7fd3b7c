"""Block schedules: which block each optimizer step trains.

The block is a pure function of (seed, step), drawn once per optimizer step
(kept through gradient accumulation), so runs are reproducible and a resumed
run continues the same sequence.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.errors import ConfigError

SCHEDULES = ("uniform", "round_robin")


class BlockSchedule:
  """Draws blocks for optimizer steps.

  Args:
    kind: "uniform" (uniform random block per step; the paper's default) or
      "round_robin" (cycles through the trained blocks in order).
    num_blocks: B.
    train_blocks: the subset of blocks to train (empty = all), e.g. (1,) to
      train only block 1.
    seed: schedule seed.
  """

  def __init__(self, kind: str, num_blocks: int, train_blocks=(), seed=0):
    if kind not in SCHEDULES:
      raise ConfigError(
        f"blocks.schedule={kind!r} is unknown; choose one of {SCHEDULES}."
      )
    blocks = tuple(int(b) for b in train_blocks) or tuple(range(num_blocks))
    if any(not 0 <= b < num_blocks for b in blocks) or len(set(blocks)) != len(
      blocks
    ):
      raise ConfigError(
        f"blocks.train={list(train_blocks)} must list distinct blocks in"
        f" [0, {num_blocks})."
      )
    self.kind = kind
    self.blocks = np.array(sorted(blocks))
    self.key = jax.random.key(seed)

  def __call__(self, start_step: int, count: int) -> np.ndarray:
    """The blocks of steps [start_step, start_step + count): [count] int."""
    steps = np.arange(start_step, start_step + count)
    if self.kind == "round_robin":
      return self.blocks[steps % len(self.blocks)]
    idx = _uniform_indices(self.key, jnp.asarray(steps), len(self.blocks))
    return self.blocks[np.asarray(idx)]


@functools.partial(jax.jit, static_argnums=2)
def _uniform_indices(key, steps, n):
  draw = lambda s: jax.random.randint(jax.random.fold_in(key, s), (), 0, n)
  return jax.vmap(draw)(steps)
