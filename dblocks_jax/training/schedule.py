"""The run's schedule: which block each device group trains at each global
step, and each update's key and schedule step.

A run of every block on one group follows the official sequential rule:
global step s trains the block the schedule draws for s, with the key
fold_in(seed, s), the learning rate of step s and the next batch of one data
stream. A run whose blocks are split (G > 1 groups, or a per-block job
training some blocks) follows the per-block rule: update n of block b uses
the key fold_in(fold_in(seed, b), n), the learning rate of step n B and the
next batch of block b's own stream, so that any split of the blocks over
groups and jobs trains the same model (with the round-robin schedule).

Everything here is a lookup: the block of a step is a pure function of
(seed, group, step), so asking twice gives the same answer and a resumed
run continues the same sequence.

Keys are drawn like the blocks: a chunk of consecutive updates at a time in
one compiled call, kept on the host as raw key data (`jax.random.key_data`)
that the step wraps back into a key. Making a key per step eagerly would
wait for the device to finish the step before (a host sync per step).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.blockwise.layout import Layout
from dblocks_jax.blockwise.schedule import BlockSchedule

SCHEDULE_STEPS = ("global", "own")
_CHUNK = 1000  # Positions drawn at once (one device call per chunk).


def crossed(done: int, every: int, stride: int = 1) -> bool:
  """Whether the steps (done - stride, done] contain a multiple of
  `every` (a boundary crossed by the last step of `stride` updates)."""
  return every > 0 and done // every > (done - stride) // every


class RunSchedule:
  """The blocks, keys and schedule steps of a run's updates.

  Args:
    kind: "uniform" (random blocks, the paper) or "round_robin".
    layout: the run's layout (its groups and the blocks each holds).
    seed: the run's seed (each group's schedule is seeded apart).
    schedule_step: "global" (the optimizer's schedules follow the global
      step, the official rule) or "own" (optax's own counts).
    blockwise: False for an end-to-end network (every step is "block 0").
  """

  def __init__(
    self,
    kind: str,
    layout: Layout,
    seed: int,
    schedule_step: str = "global",
    blockwise: bool = True,
  ):
    if schedule_step not in SCHEDULE_STEPS:
      raise ValueError(
        f"schedule_step={schedule_step!r} is unknown; choose one of"
        f" {SCHEDULE_STEPS}."
      )
    self.layout = layout
    self.seed = int(seed)
    self.schedule_step = schedule_step
    self.per_block = layout.stacked or layout.partial
    self._groups = [
      BlockSchedule(kind, layout.group_blocks(g), seed=self.seed + 7919 * g)
      for g in range(layout.num_groups)
      if blockwise and layout.blocks
    ]
    self._chunks: dict[int, tuple[int, np.ndarray]] = {}
    self._key_chunks: dict[int | None, tuple[int, np.ndarray]] = {}

  def blocks_at(self, step: int) -> list[int]:
    """The block each device group trains at global step `step` (the step
    that advances the count from `step` to `step + G`)."""
    if not self._groups:
      return [0]
    position = step // self.layout.num_groups
    chunk = position - position % _CHUNK
    out = []
    for g, schedule in enumerate(self._groups):
      start, drawn = self._chunks.get(g, (None, None))
      if start != chunk:
        start, drawn = chunk, schedule(chunk, _CHUNK)
        self._chunks[g] = (start, drawn)
      out.append(int(drawn[position - start]))
    return out

  def update(self, block: int, step: int, updates: int):
    """(key data, schedule step) of an update of `block` taken at global
    step `step`, the block's `updates`-th (its count before this update).

    The key is fold_in(key(seed), step) (the sequential rule) or
    fold_in(fold_in(key(seed), block), updates) (the per-block rule), as
    raw key data: uint32 [*jax.random.key_data shape]; the step wraps it.
    """
    if not self.per_block:
      data, at = self._key_data(None, step), step
    else:
      data = self._key_data(block, updates)
      at = updates * self.layout.num_blocks
    return data, None if self.schedule_step == "own" else at

  def _key_data(self, block: int | None, count: int) -> np.ndarray:
    """Key data of update `count` of the stream of `block` (None: the
    global step's), from a chunk drawn at once."""
    chunk = count - count % _CHUNK
    start, drawn = self._key_chunks.get(block, (None, None))
    if start != chunk:
      per_block = block is not None
      drawn = _key_chunk(self.seed, per_block, block or 0, chunk)
      drawn = np.asarray(drawn)
      self._key_chunks[block] = (chunk, drawn)
    return drawn[count - chunk]

  def end_step(self, total_steps: int) -> int:
    """The last global step: total_steps, or (per-block rule) the steps
    that give every trained block total_steps // B updates."""
    if not self.per_block:
      return total_steps
    per_block = total_steps // self.layout.num_blocks
    return per_block * len(self.layout.blocks)

  def crossed(self, done: int, every: int) -> bool:
    """Whether the step that reached `done` crossed a multiple of
    `every` (a step advances the count by G)."""
    return crossed(done, every, self.layout.num_groups)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _key_chunk(seed: int, per_block: bool, stream, start) -> jax.Array:
  """Key data of counts start .. start + _CHUNK - 1 of a stream: folded
  into fold_in(key(seed), stream) (per_block) or into key(seed)."""
  root = jax.random.key(seed)
  if per_block:
    root = jax.random.fold_in(root, stream)
  counts = start + jnp.arange(_CHUNK)
  keys = jax.vmap(lambda n: jax.random.fold_in(root, n))(counts)
  return jax.random.key_data(keys)
