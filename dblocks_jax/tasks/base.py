"""The task protocol: a block's loss and routed inference, one signature.

A task knows what the network computes and what it is trained to do; the
engine knows blocks, noise ranges and optimizers. The engine calls

  task.loss(parts, batch, level, key, train=True) -> (loss, metrics)

with `parts` the merged modules of the shared group, the active block and
the fixed group ({name: nnx.Module}), `level` [batch] the noise levels it
drew in the block's training range (None for a task trained without noise,
such as a plain end-to-end classifier), and a PRNG key. At inference,

  task.predict(parts_for_block, batch, key, sampler=...) -> outputs

gets `parts_for_block(b)` (the modules that block b runs with) and a
`Sampler` (grid levels, each routed to a block), or `sampler=None` for a task
without noise. A task may also define `evaluate(predict, batches, key) ->
dict` (e.g. accuracy), which `Trainer.evaluate` calls, and
`batch_fields(parts, example) -> {name: Field}` (`tasks.batches`): the
fields it reads, their dtypes, ranks and the range of class or token ids,
against which the trainer checks every batch, and `step_depth() ->
StepDepth` when its training steps draw how deep they run (`step_depth`;
the FLOPs count asks it).
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from dblocks_jax.diffusion.samplers import SAMPLERS

# Euler and Heun for the continuous (EDM) families; MD4's ancestral
# unmasking for masked diffusion.
SAMPLER_METHODS = (*SAMPLERS, "ancestral")
Parts = Mapping[str, Any]
Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A routed sampler: a descending grid of levels and the block of each.

  Attributes:
    levels: [N] noise levels, noisiest first (e.g. sigmas from 80 down to
      0.002); the sampler takes N - 1 steps and evaluates once more at the
      last level.
    blocks: [N] the block that denoises at each level (the plan's routing).
    method: "euler" (one evaluation per level), "heun", or "ancestral"
      (masked diffusion).
  """

  levels: np.ndarray
  blocks: np.ndarray
  method: str = "euler"

  def __post_init__(self):
    if self.method not in SAMPLER_METHODS:
      raise ValueError(
        f"method={self.method!r} is unknown; choose one of {SAMPLER_METHODS}."
      )
    if len(self.levels) != len(self.blocks) or not len(self.levels):
      raise ValueError(
        f"levels ({len(self.levels)}) and blocks ({len(self.blocks)}) must"
        " have one entry per grid point, at least one."
      )

  @classmethod
  def of(
    cls, plan, num_steps: int = 0, grid: str = "", method: str = "euler"
  ) -> "Sampler":
    """The sampler of `plan` over `num_steps` grid points (0 = B).

    Args:
      plan: a BlockPlan.
      num_steps: grid points N (0 = one per block, the official default).
      grid: the noise process's grid kind ("" = its default; EDM: "cdf" or
        "karras").
      method: "euler" or "heun".
    """
    levels, blocks = plan.grid(num_steps, grid)
    return cls(np.asarray(levels), np.asarray(blocks), method)

  @property
  def num_steps(self) -> int:
    return len(self.levels)

  @property
  def key(self) -> tuple:
    """A hashable identity of the grid (levels, blocks, method)."""
    return (
      tuple(np.asarray(self.levels).tolist()),
      tuple(np.asarray(self.blocks).tolist()),
      self.method,
    )


@dataclasses.dataclass(frozen=True)
class StepDepth:
  """How the cost of a training step depends on a depth drawn per step.

  A task whose steps draw a depth r (the recurrent-depth baseline) runs a
  loop whose trip count varies, and XLA's cost analysis counts a loop body
  once; the FLOPs count (`families.flops`) compiles the step at fixed depths
  instead and averages over the draws.

  Attributes:
    backprop: k, the iterations that carry gradients: a step costs the same
      at every r <= k, and affinely more beyond.
    draw: `draw(key) -> r`, a step's depth (int scalar; vmappable).
    fixed: `fixed(r) -> task`, the task with every step at depth r, every
      iteration written out (no loop).
  """

  backprop: int
  draw: Callable[[jax.Array], jax.Array]
  fixed: Callable[[int], Any]


def step_depth(task) -> StepDepth | None:
  """`task.step_depth()`; None (the default, for a task without it): every
  training step runs the same program."""
  method = getattr(task, "step_depth", None)
  return None if method is None else method()


@runtime_checkable
class Task(Protocol):
  """What a model family trains: see the module docstring."""

  def loss(
    self,
    parts: Parts,
    batch: Batch,
    level: jax.Array | None,
    key: jax.Array,
    *,
    train: bool = True,
  ) -> tuple[jax.Array, dict]: ...

  def predict(
    self,
    parts_for_block: Callable[[int], Parts],
    batch: Batch,
    key: jax.Array,
    *,
    sampler: Sampler | None,
  ) -> Any: ...


def accuracy(
  predict: Callable[[Batch, jax.Array], jax.Array],
  batches: Iterable[Batch],
  key: jax.Array,
  *,
  label_key: str = "label",
) -> dict:
  """Top-1 accuracy of `predict(batch, key) -> logits` over `batches`.

  Rows whose `mask` (when a batch has one) is False are padding and are not
  counted. Batch i uses `fold_in(key, i)`.

  Returns:
    {"accuracy": float, "num_examples": int}.
  """
  correct, total = 0, 0
  for i, batch in enumerate(batches):
    logits = predict(batch, jax.random.fold_in(key, i))
    predictions = np.asarray(np.argmax(np.asarray(logits), -1))
    labels = np.asarray(batch[label_key])
    mask = np.asarray(batch.get("mask", np.ones(len(labels), bool)), bool)
    correct += int(np.sum((predictions == labels) & mask))
    total += int(mask.sum())
  return {"accuracy": correct / max(total, 1), "num_examples": total}
