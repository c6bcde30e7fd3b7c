"""One optimizer state per group of parameters, from any optax optimizer.

Every group (the shared parts, and each block) gets its own state, so
inactive blocks are neither decayed nor moved and each block has its own
Adam step count (PyTorch skips parameters whose grad is None; optax would
apply stale momentum and decay to zero gradients). The groups take one
`optax.GradientTransformation`, or one per block (`GroupOptimizers`): a
callable `block -> transformation` and another for the shared parts, e.g.
block 0 at its own learning rate.

Schedules follow the GLOBAL step, as in the official code: before each
update the step counts that optax's schedules read (`scale_by_schedule`,
`inject_hyperparams`) are set to the step the update stands for, while the
moments' own counts (Adam's bias correction) keep counting the group's own
updates. `schedule_step=None` leaves every count to optax (each group then
runs its schedule on its own updates).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

_SCHEDULE_STATES = (
  optax.ScaleByScheduleState,
  optax.InjectHyperparamsState,
  optax.InjectStatefulHyperparamsState,
)


def check_optimizer(
  tx, name: str = "optimizer"
) -> optax.GradientTransformation:
  """`tx` if it is an optax transformation, else a TypeError naming
  `name`."""
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError(
      f"{name}={tx!r} is not an optax.GradientTransformation; pass e.g."
      " optax.adamw(1e-3) or an optax.chain(...) (schedules included), or"
      " for the blocks a callable block -> transformation."
    )
  return tx


@dataclasses.dataclass(frozen=True)
class GroupOptimizers:
  """The transformation of each group: the shared parts' and each block's
  (None where a group has nothing to train or the block is not held)."""

  shared: optax.GradientTransformation | None
  blocks: tuple[optax.GradientTransformation | None, ...]

  @classmethod
  def create(
    cls,
    optimizer,
    shared_optimizer=None,
    *,
    num_blocks: int,
    held_blocks=(),
    has_shared: bool = True,
    stacked_groups: int = 0,
  ) -> "GroupOptimizers | None":
    """The groups' transformations from the `Trainer`'s arguments.

    Args:
      optimizer: one `optax.GradientTransformation` for every group, a
        callable `block -> transformation` (called once per held block), or
        None (no training: inference only).
      shared_optimizer: the shared parts' transformation (default: the one
        `optimizer`; needed with a per-block callable when the model has
        shared parts).
      num_blocks: B (0 for a network without blocks).
      held_blocks: the blocks this run holds (their transformations are
        built).
      has_shared: the model has shared parts to train.
      stacked_groups: G when G > 1 device groups train their blocks in one
        compiled step (which takes one transformation for all), else 0.

    Returns:
      None when `optimizer` is None (an inference-only trainer).

    Raises:
      TypeError: a transformation is not an optax one.
      ValueError: a per-block callable without blocks, shared parts
        without a `shared_optimizer`, or per-block optimizers for stacked
        groups.
    """
    if optimizer is None:
      if shared_optimizer is not None:
        raise ValueError(
          "shared_optimizer is set but optimizer=None (an inference-only"
          " trainer); pass the blocks' optimizer too, or neither."
        )
      return None
    if isinstance(optimizer, optax.GradientTransformation):
      shared = check_optimizer(
        shared_optimizer or optimizer, "shared_optimizer"
      )
      blocks = {b: optimizer for b in held_blocks}
    elif callable(optimizer):
      if getattr(optimizer, "__module__", "").startswith("optax"):
        name = getattr(optimizer, "__name__", "it")
        raise TypeError(
          f"optimizer=optax.{name} is optax's factory, not a transformation;"
          f" call it, e.g. optax.{name}(1e-3)."
        )
      if not num_blocks:
        raise ValueError(
          "optimizer is a per-block callable, but this network has no"
          " blocks (trained end to end); pass one optax transformation."
        )
      blocks = {
        b: check_optimizer(optimizer(b), f"optimizer({b})") for b in held_blocks
      }
      if has_shared and shared_optimizer is None:
        raise ValueError(
          "the model has shared parts (sharing='shared') and optimizer is a"
          " per-block callable; pass shared_optimizer=... for the shared"
          " parts (e.g. the callable's optimizer of block 0)."
        )
      shared = (
        check_optimizer(shared_optimizer, "shared_optimizer")
        if shared_optimizer is not None
        else None
      )
    else:
      check_optimizer(optimizer)
    if stacked_groups and len({id(tx) for tx in blocks.values()}) > 1:
      raise ValueError(
        f"block_groups={stacked_groups} trains its groups' blocks in one"
        " compiled step with one transformation; per-block optimizers need"
        " block_groups=1 or one job per block (train_blocks=(b,))."
      )
    return cls(
      shared=shared if has_shared else None,
      blocks=tuple(blocks.get(b) for b in range(num_blocks)),
    )

  def for_groups(self, block: int | None) -> dict:
    """{"shared", "block"} transformations of a step of `block` (None: a
    network without blocks)."""
    return {
      "shared": self.shared,
      "block": None if block is None else self.blocks[block],
    }


def _is_schedule_state(node) -> bool:
  return isinstance(node, _SCHEDULE_STATES)


def at_schedule_step(opt_state, step):
  """`opt_state` with the counts its schedules read set to `step`."""

  def set_count(node):
    if _is_schedule_state(node):
      return node._replace(count=jnp.asarray(step, node.count.dtype))
    return node

  return jax.tree.map(set_count, opt_state, is_leaf=_is_schedule_state)


def update_group(
  tx: optax.GradientTransformation, group, grads, schedule_step=None
):
  """One update of a group {"params", "opt_state", ...} (other keys kept).

  Args:
    tx: the optimizer.
    group: the group's params and optimizer state.
    grads: gradients of the group's params.
    schedule_step: the global step for the schedules (None: optax's own
      counts).
  """
  opt_state = group["opt_state"]
  if schedule_step is not None:
    opt_state = at_schedule_step(opt_state, schedule_step)
  updates, opt_state = tx.update(grads, opt_state, group["params"])
  return dict(
    group,
    params=optax.apply_updates(group["params"], updates),
    opt_state=opt_state,
  )
