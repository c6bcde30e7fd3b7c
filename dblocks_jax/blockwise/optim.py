"""One optimizer state per group of parameters, from any optax optimizer.

Every group (the shared parts, and each block) gets its own state from the
same `optax.GradientTransformation`, so inactive blocks are neither decayed
nor moved and each block has its own Adam step count (PyTorch skips
parameters whose grad is None; optax would apply stale momentum and decay to
zero gradients).

Schedules follow the GLOBAL step, as in the official code: before each
update the step counts that optax's schedules read (`scale_by_schedule`,
`inject_hyperparams`) are set to the step the update stands for, while the
moments' own counts (Adam's bias correction) keep counting the group's own
updates. `schedule_step=None` leaves every count to optax (each group then
runs its schedule on its own updates).
"""

import jax
import jax.numpy as jnp
import optax

_SCHEDULE_STATES = (
  optax.ScaleByScheduleState,
  optax.InjectHyperparamsState,
  optax.InjectStatefulHyperparamsState,
)


def check_optimizer(tx) -> optax.GradientTransformation:
  """`tx` if it is an optax transformation, else a TypeError."""
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError(
      f"optimizer={tx!r} is not an optax.GradientTransformation; pass e.g."
      " optax.adamw(1e-3) or an optax.chain(...) (schedules included)."
    )
  return tx


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
