"""Losses and jitted training steps over groups of parameters.

A step updates the groups it is given ("shared" and, block-wise, "block":
the ACTIVE block only) and nothing else, so the other blocks' parameters and
optimizer states are untouched by construction and never enter the device
program. The block index and its noise range are traced values: all blocks
of equal structure share one compiled step.

A group is {"params", "opt_state", "rest"}: `rest` is the parts' other state
(e.g. BatchNorm statistics), which the step returns updated. Batches are
process-local arrays assembled into global arrays sharded along the mesh's
`data` axis, so the gradient mean over the batch is a reduction across
devices and processes: data parallelism.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dblocks_jax.blockwise import layout as layout_lib
from dblocks_jax.blockwise import optim
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.blockwise.plan import check_ranges

LossFn = Callable[..., tuple[jax.Array, tuple[dict, dict]]]
_PART_KEY = 0x5EED  # Folded into a step's key for the parts' RNG streams.


def _level_shape(task, batch) -> tuple[int, ...]:
  """[batch] levels, or the task's `level_shape(batch)` (e.g. one level per
  token)."""
  if hasattr(task, "level_shape"):
    return tuple(task.level_shape(batch))
  return (jax.tree.leaves(batch)[0].shape[0],)


def _merged(defs, arrays, key, train: bool) -> dict:
  return parts_lib.merge(defs, arrays, key=key, train=train)


def block_loss(
  task,
  graphdefs: parts_lib.GraphDefs,
  block_defs: parts_lib.PartDefs,
  noise,
  train_ranges,
) -> LossFn:
  """The DiffusionBlocks loss of one block.

  Draws each example's level (or the `task.level_shape(batch)` levels a
  task asks for) from `noise.sample` in the training range of the traced
  `block_index`, then calls `task.loss(parts, batch, level, key,
  train=True)` with the merged shared, block and fixed parts.

  Args:
    task: the task.
    graphdefs: the model's definitions.
    block_defs: the active block's definitions (equal for equal blocks).
    noise: the noise process.
    train_ranges: [B, 2] (lo, hi) per block, in block order (block 0 the
      noisiest), as `BlockPlan.train_ranges`.

  Returns:
    `loss_fn(params, rest, fixed, batch, key, block_index) -> (loss,
    (metrics, new_rest))`, params and rest keyed by group.
  """
  ranges = jnp.asarray(
    check_ranges(train_ranges, len(graphdefs.blocks)), jnp.float32
  )

  def loss_fn(params, rest, fixed, batch, key, block_index):
    part_key = jax.random.fold_in(key, _PART_KEY)
    level_key, key = jax.random.split(key)
    shared, block = _group_parts(
      graphdefs.shared, block_defs, params, rest, part_key
    )
    parts = {**_merged(graphdefs.fixed, fixed, None, False), **shared, **block}
    lo, hi = ranges[block_index, 0], ranges[block_index, 1]
    level = noise.sample(level_key, _level_shape(task, batch), lo, hi)
    loss, metrics = task.loss(parts, batch, level, key, train=True)
    return loss, (metrics, _new_rest(shared, block))

  return loss_fn


def end_to_end_loss(task, graphdefs: parts_lib.GraphDefs) -> LossFn:
  """The loss of a network trained in one piece (group "shared"), without
  noise: `task.loss(parts, batch, None, key, train=True)`."""

  def loss_fn(params, rest, fixed, batch, key, block_index):
    del block_index
    part_key = jax.random.fold_in(key, _PART_KEY)
    shared, _ = _group_parts(graphdefs.shared, (), params, rest, part_key)
    parts = {**_merged(graphdefs.fixed, fixed, None, False), **shared}
    loss, metrics = task.loss(parts, batch, None, key, train=True)
    return loss, (metrics, _new_rest(shared, {}))

  return loss_fn


def _group_parts(shared_defs, block_defs, params, rest, key):
  # Fresh variables of this trace (the gradient's), which modules such as
  # BatchNorm may update.
  rest = jax.tree.map(lambda x: x, rest)

  def parts_of(group, defs, i):
    if group not in params:
      return {}
    arrays = {"params": params[group], "rest": rest[group]}
    return _merged(defs, arrays, jax.random.fold_in(key, i), True)

  return parts_of("shared", shared_defs, 0), parts_of("block", block_defs, 1)


def _new_rest(shared, block) -> dict:
  out = {}
  if shared:
    out["shared"] = parts_lib.rest_of(shared)
  if block:
    out["block"] = parts_lib.rest_of(block)
  return out


def clip_by_global_norm(grads, max_norm: float):
  """torch.nn.utils.clip_grad_norm_: scale by min(1, max / (norm + 1e-6)).

  Returns:
    (clipped grads, the norm before clipping). max_norm <= 0 disables it.
  """
  norm = optax.global_norm(grads)
  if max_norm <= 0:
    return grads, norm
  scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
  return jax.tree.map(lambda g: g * scale, grads), norm


def make_gradients(loss_fn: LossFn, accumulation_steps: int = 1):
  """`gradients(params, rest, fixed, batch, key, block_index) -> ((loss,
  (metrics, rest)), grads)`, the loss, metrics and gradients averaged over
  `accumulation_steps` equal micro-batches (the batch's leading axis is
  split; all train the same block) and `rest` threaded through them."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accumulation_steps == 1:
    return grad_fn

  def gradients(params, rest, fixed, batch, key, block_index):
    micro = jax.tree.map(
      lambda x: x.reshape(accumulation_steps, -1, *x.shape[1:]), batch
    )

    def body(carry, inputs):
      total, rest = carry
      i, micro_batch = inputs
      (loss, (metrics, rest)), grads = grad_fn(
        params,
        rest,
        fixed,
        micro_batch,
        jax.random.fold_in(key, i),
        block_index,
      )
      total = jax.tree.map(jnp.add, total, (loss, metrics, grads))
      return (total, rest), None

    first = jax.tree.map(lambda x: x[0], micro)
    (loss, (metrics, _)), grads = jax.eval_shape(
      grad_fn, params, rest, fixed, first, key, block_index
    )
    zeros = jax.tree.map(jnp.zeros_like, (loss, metrics, grads))
    (total, rest), _ = jax.lax.scan(
      body, (zeros, rest), (jnp.arange(accumulation_steps), micro)
    )
    loss, metrics, grads = jax.tree.map(lambda x: x / accumulation_steps, total)
    return (loss, (metrics, rest)), grads

  return gradients


def group_gradients(
  gradients, groups: Mapping, fixed, batch, key, block_index, clip_norm
):
  """(clipped grads by group, new rest by group, metrics) of one step."""
  params = {name: g["params"] for name, g in groups.items()}
  rest = {name: g["rest"] for name, g in groups.items()}
  (loss, (metrics, new_rest)), grads = gradients(
    params, rest, fixed, batch, key, block_index
  )
  grads, grad_norm = clip_by_global_norm(grads, clip_norm)
  metrics = dict(
    metrics,
    loss=loss,
    grad_norm=grad_norm,
    nonfinite_batch=has_non_finite(batch),
  )
  return grads, new_rest, metrics


def has_non_finite(batch) -> jax.Array:
  """Whether a floating field of `batch` holds NaN or Inf (the step's
  `nonfinite_batch` metric, which a NaN loss's message reports)."""
  flags = [
    jnp.any(~jnp.isfinite(x))
    for x in jax.tree.leaves(batch)
    if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  return jnp.any(jnp.stack(flags)) if flags else jnp.zeros((), bool)


def as_key(key) -> jax.Array:
  """A typed PRNG key from `key`: a key, or its raw data (uint32, as
  `jax.random.key_data` gives it, which a host can hold without a device
  call; batched data gives batched keys)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


def group_tx(tx, group: str) -> optax.GradientTransformation:
  """The transformation of `group` ("shared" or "block"): `tx` itself, or
  its entry when `tx` maps groups to transformations."""
  return tx[group] if isinstance(tx, Mapping) else tx


def build_train_step(
  loss_fn: LossFn,
  tx: optax.GradientTransformation,
  *,
  clip_norm: float = 0.0,
  accumulation_steps: int = 1,
  learning_rate_fn: optax.Schedule | None = None,
  shardings=None,
  donate: bool = True,
):
  """Builds the step of one device group (data parallel over its devices).

  `step(block, shared, fixed, batch, key, block_index, schedule_step) ->
  (block, shared, metrics)`, where block and shared are groups
  {"params", "opt_state", "rest"} or {} (absent), key a PRNG key or its raw
  data (`as_key`), and schedule_step the global step the optimizer's
  schedules read (None: optax's counts).

  Args:
    loss_fn: from `block_loss` or `end_to_end_loss`.
    tx: the optimizer (every group has its own state of it), or {"shared":
      tx, "block": tx}, one per group.
    clip_norm: global-norm clip over the updated groups together (0 = off).
    accumulation_steps: micro-batches per step (same block for all).
    learning_rate_fn: adds "learning_rate" to the metrics (logging only).
    shardings: (replicated, batch) `NamedSharding`s of a mesh, or None.
    donate: update the groups' buffers in place.
  """
  gradients = make_gradients(loss_fn, accumulation_steps)

  def step(block, shared, fixed, batch, key, block_index, schedule_step):
    groups = {n: g for n, g in (("shared", shared), ("block", block)) if g}
    grads, new_rest, metrics = group_gradients(
      gradients, groups, fixed, batch, as_key(key), block_index, clip_norm
    )
    new = {
      name: optim.update_group(
        group_tx(tx, name),
        dict(g, rest=new_rest[name]),
        grads[name],
        schedule_step,
      )
      for name, g in groups.items()
    }
    if learning_rate_fn is not None and schedule_step is not None:
      metrics["learning_rate"] = learning_rate_fn(schedule_step)
    return new.get("block", {}), new.get("shared", {}), metrics

  kwargs = {"donate_argnums": (0, 1) if donate else ()}
  if shardings is not None:
    replicated, batch_sharding = shardings
    kwargs["in_shardings"] = (
      replicated,
      replicated,
      replicated,
      batch_sharding,
      replicated,
      replicated,
      replicated,
    )
    kwargs["out_shardings"] = (replicated, replicated, replicated)
  return jax.jit(step, **kwargs)


def build_mesh_step(
  loss_fn: LossFn,
  tx: optax.GradientTransformation,
  mesh,
  *,
  clip_norm: float = 0.0,
  accumulation_steps: int = 1,
  learning_rate_fn: optax.Schedule | None = None,
  has_shared: bool = False,
):
  """Builds the step of G device groups at once (`layout.Layout`, G > 1).

  `step(stacked, shared, fixed, batch, keys, block_ids, slots,
  schedule_steps) -> (stacked, shared, metrics)`, where

    stacked         the groups' blocks {"params", "opt_state", "rest"},
                    [G, k, ...] along `block`
    shared          the shared group, or {}
    batch           [G, batch, ...] (one batch per group)
    keys            [G] step keys (or their raw data, `as_key`);
                    block_ids [G] the blocks trained
    slots           [G] the stacked slot each group trains
    schedule_steps  [G] the global steps the schedules read
    metrics         [G] per group

  `tx` is as `build_train_step`'s (every group's block takes the same
  "block" transformation). Each group's block is updated as
  `build_train_step` would, with its own batch, key and block index; the
  shared parts take one step on the mean of the groups' (per-group
  clipped) gradients, and their `rest` is the mean of the groups' new
  values.
  """
  gradients = make_gradients(loss_fn, accumulation_steps)

  def group_step(block, shared, fixed, batch, key, block_index, schedule_step):
    groups = {"block": block}
    if has_shared:
      groups["shared"] = shared
    grads, new_rest, metrics = group_gradients(
      gradients, groups, fixed, batch, key, block_index, clip_norm
    )
    new_block = optim.update_group(
      group_tx(tx, "block"),
      dict(block, rest=new_rest["block"]),
      grads["block"],
      schedule_step,
    )
    return new_block, grads.get("shared"), new_rest.get("shared"), metrics

  def take(xs, i):
    return jax.tree.map(lambda x: x[i], xs)

  def put(xs, i, ys):
    return jax.tree.map(lambda x, y: x.at[i].set(y), xs, ys)

  def step(
    stacked, shared, fixed, batch, keys, block_ids, slots, schedule_steps
  ):
    active = jax.vmap(take)(stacked, slots)
    new_active, shared_grads, shared_rest, metrics = jax.vmap(
      group_step, in_axes=(0, None, None, 0, 0, 0, 0)
    )(active, shared, fixed, batch, as_key(keys), block_ids, schedule_steps)
    stacked = jax.vmap(put)(stacked, slots, new_active)
    if has_shared:
      mean = lambda t: jax.tree.map(
        lambda x: (
          jnp.mean(x, axis=0).astype(x.dtype)
          if jnp.issubdtype(x.dtype, jnp.floating)
          else x[0]
        ),
        t,
      )
      shared = optim.update_group(
        group_tx(tx, "shared"),
        dict(shared, rest=mean(shared_rest)),
        mean(shared_grads),
        None if schedule_steps is None else schedule_steps[0],
      )
    if learning_rate_fn is not None and schedule_steps is not None:
      metrics["learning_rate"] = jax.vmap(learning_rate_fn)(schedule_steps)
    return stacked, shared, metrics

  by_block = layout_lib.by_block(mesh)
  replicated = layout_lib.replicated(mesh)
  return jax.jit(
    step,
    in_shardings=(
      by_block,
      replicated,
      replicated,
      layout_lib.batch_sharding(mesh, True),
      by_block,
      by_block,
      by_block,
      by_block,
    ),
    out_shardings=(by_block, replicated, by_block),
    donate_argnums=(0, 1),
  )


def loss_of(task, graphdefs: parts_lib.GraphDefs, plan, block: int) -> LossFn:
  """The loss a step of `block` minimises: `block_loss` over the block's
  training range of `plan`, or `end_to_end_loss` when plan is None."""
  if plan is None:
    return end_to_end_loss(task, graphdefs)
  return block_loss(
    task, graphdefs, graphdefs.blocks[block], plan.noise, plan.train_ranges
  )


def make_step(
  task,
  graphdefs: parts_lib.GraphDefs,
  plan,
  block: int,
  tx,
  *,
  clip_norm: float = 0.0,
  accumulation_steps: int = 1,
  learning_rate_fn: optax.Schedule | None = None,
  mesh=None,
  stacked: bool = False,
  has_shared: bool = False,
  donate: bool = True,
):
  """The training step of `block`'s structure, as the trainer runs it.

  Args:
    task, graphdefs, plan, block: what `loss_of` needs (plan None: the
      end-to-end baseline).
    tx: a transformation, or {"shared": tx, "block": tx}.
    mesh: the run's mesh; None: one device, no shardings given.
    stacked: G > 1 device groups train stacked blocks at once
      (`build_mesh_step`, which needs the mesh); else `build_train_step`.
    has_shared: the model has shared parts (stacked steps only).
    donate: update the groups' buffers in place (one-group steps).
  """
  loss_fn = loss_of(task, graphdefs, plan, block)
  options = dict(
    clip_norm=clip_norm,
    accumulation_steps=accumulation_steps,
    learning_rate_fn=learning_rate_fn,
  )
  if stacked:
    return build_mesh_step(loss_fn, tx, mesh, has_shared=has_shared, **options)
  shardings = None
  if mesh is not None:
    shardings = (
      layout_lib.replicated(mesh),
      layout_lib.batch_sharding(mesh, False),
    )
  return build_train_step(
    loss_fn, tx, shardings=shardings, donate=donate, **options
  )


def group_state(arrays: dict, tx) -> dict:
  """A group {"params", "rest"} with its optimizer state (`tx.init`) added
  as "opt_state"; unchanged when tx is None (inference only)."""
  if tx is None:
    return dict(arrays)
  return dict(arrays, opt_state=tx.init(arrays["params"]))


def abstract(tree):
  """ShapeDtypeStructs of a pytree of arrays (for ahead-of-time lowering)."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree
  )
