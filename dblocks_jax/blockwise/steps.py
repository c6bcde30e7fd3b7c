"""Jitted training steps over groups of parameters.

A step updates the groups it is given ("shared" and, block-wise, "block": the
ACTIVE block only) and nothing else, so the other blocks' parameters and
optimizer states are untouched by construction and never enter the device
program. The block index and its sigma range are traced values: all blocks of
equal structure share one compiled step.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from dblocks_jax import diffusion
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.errors import ConfigError

SIGMA_SAMPLINGS = ("lognormal", "log_uniform")

LossFn = Callable[..., tuple[jax.Array, dict]]


def with_learning_rate(opt_state, learning_rate):
  """Sets the injected learning rate of an inject_hyperparams state."""
  hyper = dict(opt_state.hyperparams)
  hyper["learning_rate"] = jnp.asarray(
    learning_rate, hyper["learning_rate"].dtype
  )
  return opt_state._replace(hyperparams=hyper)


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
  """`gradients(params, fixed, batch, key, block_index) -> ((loss, metrics),
  grads)`, averaged over `accumulation_steps` equal micro-batches (the
  batch's leading axis is split; all are trained on the same block)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accumulation_steps == 1:
    return grad_fn

  def gradients(params, fixed, batch, key, block_index):
    micro = jax.tree.map(
      lambda x: x.reshape(accumulation_steps, -1, *x.shape[1:]), batch
    )

    def body(total, inputs):
      i, micro_batch = inputs
      out = grad_fn(
        params, fixed, micro_batch, jax.random.fold_in(key, i), block_index
      )
      return jax.tree.map(jnp.add, total, out), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(
      jnp.zeros_like,
      jax.eval_shape(grad_fn, params, fixed, first, key, block_index),
    )
    total, _ = jax.lax.scan(
      body, zeros, (jnp.arange(accumulation_steps), micro)
    )
    return jax.tree.map(lambda x: x / accumulation_steps, total)

  return gradients


def update_group(tx: optax.GradientTransformation, group, grads, learning_rate):
  """One optimizer update of a group {"params", "opt_state"} at a rate."""
  opt_state = with_learning_rate(group["opt_state"], learning_rate)
  updates, opt_state = tx.update(grads, opt_state, group["params"])
  return {
    "params": optax.apply_updates(group["params"], updates),
    "opt_state": opt_state,
  }


def build_train_step(
  loss_fn: LossFn,
  tx: optax.GradientTransformation,
  learning_rate_fn: optax.Schedule,
  *,
  clip_norm: float,
  accumulation_steps: int = 1,
  donate: bool = True,
):
  """Builds `step(groups, fixed, batch, key, global_step, block_index)`.

  Args:
    loss_fn: `loss_fn(params, fixed, batch, key, block_index) -> (loss,
      metrics)` where params maps group name -> parameter pytree.
    tx: the optimizer (an inject_hyperparams transformation).
    learning_rate_fn: global step -> learning rate.
    clip_norm: global-norm clip over all updated groups together (0 = off).
    accumulation_steps: micro-batches per optimizer step; the batch's leading
      axis is split into this many equal parts, all trained on the same block.
    donate: donate the groups' buffers (in-place update).

  Returns:
    A jitted function returning (new groups, metrics). groups maps group name
    -> {"params", "opt_state"}; metrics are scalars (means over micro-batches).
  """
  gradients = make_gradients(loss_fn, accumulation_steps)

  def step(groups, fixed, batch, key, global_step, block_index):
    params = {name: g["params"] for name, g in groups.items()}
    (loss, metrics), grads = gradients(params, fixed, batch, key, block_index)
    grads, grad_norm = clip_by_global_norm(grads, clip_norm)
    learning_rate = learning_rate_fn(global_step)
    new_groups = {
      name: update_group(tx, group, grads[name], learning_rate)
      for name, group in groups.items()
    }
    metrics = dict(
      metrics, loss=loss, grad_norm=grad_norm, learning_rate=learning_rate
    )
    return new_groups, metrics

  return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_block_loss(
  objective,
  graphdefs: parts_lib.GraphDefs,
  block_defs,
  train_ranges,
  *,
  p_mean: float,
  p_std: float,
  sigma_sampling: str = "lognormal",
) -> LossFn:
  """The DiffusionBlocks loss of one block, for `build_train_step`.

  Draws sigma per example from the log-normal truncated to the (widened)
  training range of the traced `block_index` (or log-uniformly in it), then
  calls `objective.loss(parts, batch, sigma, key, train=True)`.

  Args:
    objective: a diffusion objective (e.g. DiffusionClassification).
    graphdefs: the model's graph definitions.
    block_defs: the active block's graph definitions (equal for equal blocks).
    train_ranges: [B, 2] (lo, hi) per layer block.
    p_mean: mean of ln(sigma).
    p_std: standard deviation of ln(sigma).
    sigma_sampling: "lognormal" (the paper) or "log_uniform" within the range.
  """
  if sigma_sampling not in SIGMA_SAMPLINGS:
    raise ConfigError(
      f"blocks.sigma_sampling={sigma_sampling!r} is unknown; choose one of"
      f" {SIGMA_SAMPLINGS}."
    )
  ranges = jnp.asarray(train_ranges, jnp.float32)

  def loss_fn(params, fixed, batch, key, block_index):
    parts = {
      **parts_lib.merge(graphdefs.fixed, fixed),
      **parts_lib.merge(graphdefs.shared, params.get("shared", {})),
      **parts_lib.merge(block_defs, params["block"]),
    }
    sigma_key, key = jax.random.split(key)
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    lo, hi = ranges[block_index, 0], ranges[block_index, 1]
    if sigma_sampling == "log_uniform":
      sigma = diffusion.sample_log_uniform(sigma_key, (batch_size,), lo, hi)
    else:
      sigma = diffusion.sample_truncated_lognormal(
        sigma_key, (batch_size,), lo, hi, p_mean, p_std
      )
    return objective.loss(parts, batch, sigma, key, train=True)

  return loss_fn


def make_end_to_end_loss(objective, graphdefs: parts_lib.GraphDefs) -> LossFn:
  """The baseline's loss over the whole network (group "shared")."""

  def loss_fn(params, fixed, batch, key, block_index):
    del block_index
    parts = {
      **parts_lib.merge(graphdefs.fixed, fixed),
      **parts_lib.merge(graphdefs.shared, params["shared"]),
    }
    return objective.loss(parts, batch, key, train=True)

  return loss_fn


def groups_for_block(
  shared: Mapping | None, block: Mapping | None
) -> dict[str, Mapping]:
  """The groups a step updates: the shared group (if any) and the block."""
  groups = {}
  if shared and jax.tree.leaves(shared["params"]):
    groups["shared"] = shared
  if block is not None:
    groups["block"] = block
  return groups
