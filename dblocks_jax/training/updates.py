"""A run's updates: the compiled steps (one per distinct block structure and
optimizer, from `blockwise.steps.make_step`), run on the placed state.

G = 1: a step updates one block (and the shared parts) on every device of
the mesh, with the batch split along `data`. G > 1: one compiled step
updates the G groups' blocks at once, each group's block picked from its
stack by a slot index.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.blockwise import layout as layout_lib
from dblocks_jax.blockwise import steps
from dblocks_jax.blockwise.optim import GroupOptimizers
from dblocks_jax.training.placement import Placement
from dblocks_jax.training.schedule import RunSchedule


class Updates:
  """Runs and lowers a run's training steps.

  Args:
    task, graphdefs, plan: what the loss is (plan None: end to end).
    optimizers: the groups' transformations.
    placement: the run's state on its mesh.
    schedule: the run's schedule (keys and schedule steps of updates).
    clip_norm, accumulation_steps, learning_rate: the step's options
      (`blockwise.steps.build_train_step`).
  """

  def __init__(
    self,
    task,
    graphdefs,
    plan,
    optimizers: GroupOptimizers,
    placement: Placement,
    schedule: RunSchedule,
    *,
    clip_norm: float,
    accumulation_steps: int,
    learning_rate,
  ):
    self.task, self.graphdefs, self.plan = task, graphdefs, plan
    self.optimizers = optimizers
    self.placement = placement
    self.schedule = schedule
    self.options = dict(
      clip_norm=clip_norm,
      accumulation_steps=accumulation_steps,
      learning_rate_fn=learning_rate,
    )
    self._compiled = {}  # (block structure, optimizer) -> step.
    self._of_block = {}  # block -> step (hashing a structure is slow).
    self._in_flight = None  # The last step's metrics.
    mesh = placement.mesh
    self._serial = mesh.devices.size > 1 and (
      mesh.devices.flat[0].platform == "cpu"
    )

  @property
  def _stacked(self) -> bool:
    return self.placement.layout.stacked

  def step_fn(self, block: int):
    """The compiled step of `block`'s structure and optimizer (built once)."""
    if block in self._of_block:
      return self._of_block[block]
    tx = self.optimizers.for_groups(block if self.plan else None)
    key = (
      self.graphdefs.block_key(block) if self.plan else None,
      id(tx["block"]),
    )
    if key not in self._compiled:
      self._compiled[key] = steps.make_step(
        self.task,
        self.graphdefs,
        self.plan,
        block,
        tx,
        mesh=self.placement.mesh,
        stacked=self._stacked,
        has_shared=bool(self.placement.state["shared"]),
        **self.options,
      )
    self._of_block[block] = self._compiled[key]
    return self._compiled[key]

  def run(self, blocks_now: list[int], batch) -> dict:
    """Updates the blocks of `blocks_now` (one per group) on `batch` (one
    batch, or {block: batch} under the per-block rule) and advances the
    step and update counts. Returns the step's metrics (device arrays).

    On XLA:CPU with more than one device, one step is in flight at a
    time: the previous step is waited for just before this one is
    dispatched (its batch already placed), because XLA:CPU's devices share
    one thread pool and two in-flight all-reduces over them can each wait
    for a thread the other holds. Elsewhere steps queue as JAX dispatches
    them.
    """
    if self._stacked:
      metrics = self._mesh_step(blocks_now, batch)
    else:
      metrics = self._group_step(blocks_now[0], batch)
    state = self.placement.state
    if self.plan is not None:
      for b in blocks_now:
        state["updates"][b] += 1
    done = int(state["step"]) + self.placement.layout.num_groups
    state["step"] = np.asarray(done, np.int32)
    self._in_flight = metrics
    return metrics

  def _after_last(self, batch):
    """`batch`, once the last step is done where steps must not overlap
    (`run`)."""
    if self._in_flight is not None and self._serial:
      jax.block_until_ready(self._in_flight)
    return batch

  def _update(self, block: int):
    """(key, schedule step) of the next update of `block`."""
    state = self.placement.state
    updates = int(state["updates"][block])
    return self.schedule.update(block, int(state["step"]), updates)

  def _group_step(self, block: int, batch) -> dict:
    if self.schedule.per_block:
      batch = batch[block]
    key, schedule_step = self._update(block)
    self.placement.activate(block)
    state = self.placement.state
    new_block, new_shared, metrics = self.step_fn(block)(
      state["blocks"][block] if self.plan else {},
      state["shared"],
      state["fixed"],
      self._after_last(self.placement.global_batch({0: batch})),
      key,
      block,
      schedule_step,
    )
    if self.plan is not None:
      state["blocks"][block] = new_block
    if state["shared"]:
      state["shared"] = new_shared
    return metrics

  def _mesh_step(self, blocks_now: list[int], batches: Mapping) -> dict:
    local = {g: batches[b] for g, b in enumerate(blocks_now) if b in batches}
    keys, schedule_steps = zip(
      *(self._update(b) for b in blocks_now), strict=True
    )
    slots = [self.placement.layout.slot(b)[1] for b in blocks_now]
    placement, state = self.placement, self.placement.state
    placement.stacked, state["shared"], metrics = self.step_fn(blocks_now[0])(
      placement.stacked,
      state["shared"],
      state["fixed"],
      self._after_last(placement.global_batch(local)),
      # Device arrays: a process may not pass numpy to a sharded input.
      jnp.asarray(np.stack(keys)),
      jnp.asarray(blocks_now, jnp.int32),
      jnp.asarray(slots, jnp.int32),
      None
      if self.schedule.schedule_step == "own"
      else jnp.asarray(schedule_steps, jnp.int32),
    )
    return metrics

  def lower(self, batch_spec: Mapping, block: int = 0):
    """The step of `block`'s structure lowered on abstract inputs (see
    `Trainer.lower_step`)."""
    mesh, state = self.placement.mesh, self.placement.state
    replicated = layout_lib.replicated(mesh)
    schedule_step = None if self.schedule.schedule_step == "own" else 0
    if not self._stacked:
      return self.step_fn(block).lower(
        _shaped(state["blocks"][block] if self.plan else {}, replicated),
        _shaped(state["shared"], replicated),
        _shaped(state["fixed"], replicated),
        _shaped(batch_spec, layout_lib.batch_sharding(mesh, False)),
        jax.random.key(0),
        block,
        schedule_step,
      )
    g = self.placement.layout.num_groups
    by_block = layout_lib.by_block(mesh)
    batch_sharding = layout_lib.batch_sharding(mesh, True)
    batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
        (g, *x.shape), x.dtype, sharding=batch_sharding
      ),
      dict(batch_spec),
    )
    ints = jax.ShapeDtypeStruct((g,), jnp.int32, sharding=by_block)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), g))
    return self.step_fn(block).lower(
      _shaped(self.placement.stacked, by_block),
      _shaped(state["shared"], replicated),
      _shaped(state["fixed"], replicated),
      batch,
      keys,
      ints,
      ints,
      None if schedule_step is None else ints,
    )


def initial_state(
  optimizers: GroupOptimizers | None,
  shared: dict,
  blocks: list[dict],
  fixed: dict,
  *,
  held,
  to_host: bool,
) -> dict:
  """A run's first state: the held groups with their optimizer states
  (none for an inference-only run: optimizers None). `to_host` (offload):
  each block's state leaves the device as soon as it is made, so the
  device never holds every block's optimizer state."""

  def block_group(arrays, b):
    made = steps.group_state(
      arrays, optimizers.blocks[b] if optimizers else None
    )
    return jax.device_get(made) if to_host else made

  has_shared = bool(jax.tree.leaves(shared["params"]))
  shared_tx = optimizers.shared if optimizers else None
  return {
    "step": np.zeros((), np.int32),
    "updates": np.zeros((max(len(blocks), 1),), np.int32),
    "shared": steps.group_state(shared, shared_tx) if has_shared else {},
    "blocks": [
      block_group(b, i) if i in held else {} for i, b in enumerate(blocks)
    ],
    "fixed": fixed,
  }


def _shaped(tree, sharding):
  """ShapeDtypeStructs of `tree`'s arrays, placed by `sharding`."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
    tree,
  )
