"""`--mode=memory`: compiled memory of the block step against the end-to-end
step, from XLA's `memory_analysis()`, with no data and no training.

Both steps are lowered and compiled ahead of time on abstract inputs of the
config's batch; the report gives XLA's argument, output and temporary bytes,
and the split of the step's inputs into parameters, optimizer state and batch.
XLA temporaries hold the activations kept for the backward pass, the
gradients and scratch space. With `memory.include_remat`, both steps are also
compiled with every layer under `jax.checkpoint`.
"""

import copy

import jax
import jax.numpy as jnp
import ml_collections

from dblocks_jax import experiment
from dblocks_jax.blockwise import optim, steps
from dblocks_jax.train import init_state, make_train_step


def _bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def compiled_step_memory(config: ml_collections.ConfigDict) -> dict:
  """Compiles the training step of `config` (block 0 if block-wise)."""
  exp = experiment.build(config)
  tx = optim.make_optimizer(config.optimizer)
  graphdefs, state = init_state(exp, tx)
  block = 0  # Representative: every block of its shape compiles the same.
  groups = steps.groups_for_block(
    state["shared"], state["blocks"][block] if exp.blockwise else None
  )
  step_fn = make_train_step(exp, graphdefs, config, tx, block)
  h, w, c = config.data.image_shape
  batch = {
    "image": jax.ShapeDtypeStruct((config.batch_size, h, w, c), jnp.float32),
    "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
  }
  compiled = step_fn.lower(
    _abstract(groups),
    _abstract(state["fixed"]),
    batch,
    jax.random.key(0),
    0,
    0,
  ).compile()
  stats = compiled.memory_analysis()
  params = {k: g["params"] for k, g in groups.items()}
  opt = {k: g["opt_state"] for k, g in groups.items()}
  all_params = [state["shared"].get("params", {})] + [
    b["params"] for b in state["blocks"]
  ]
  gradient_bytes = _bytes(params)
  return {
    "argument_bytes": int(stats.argument_size_in_bytes),
    "output_bytes": int(stats.output_size_in_bytes),
    "temp_bytes": int(stats.temp_size_in_bytes),
    # Temporaries minus one gradient per updated parameter: the activations
    # kept for the backward pass and scratch (an estimate, from the split).
    "activation_bytes_estimate": max(
      int(stats.temp_size_in_bytes) - gradient_bytes, 0
    ),
    "gradient_bytes": gradient_bytes,
    "alias_bytes": int(stats.alias_size_in_bytes),
    "step_param_bytes": _bytes(params),
    "step_optimizer_state_bytes": _bytes(opt),
    "fixed_bytes": _bytes(state["fixed"]),
    "batch_bytes": _bytes(batch),
    "step_param_count": _count(params),
    "param_count": _count(all_params),
  }


def memory_report(config: ml_collections.ConfigDict) -> dict:
  """The block step against the end-to-end step (and both with remat)."""
  variants = {"block_step": "dblocks", "e2e_step": "e2e"}
  report = {"batch_size": config.batch_size, "backend": jax.default_backend()}
  for remat in (False, True) if config.memory.include_remat else (False,):
    for name, method in variants.items():
      c = copy.deepcopy(config)
      with c.unlocked():
        c.method = method
        c.model.remat = remat
      report[name + ("_remat" if remat else "")] = compiled_step_memory(c)
  block, e2e = report["block_step"], report["e2e_step"]
  report["temp_ratio_block_over_e2e"] = block["temp_bytes"] / e2e["temp_bytes"]
  report["param_count"] = block["param_count"]
  report["num_blocks"] = config.blocks.num_blocks
  if config.memory.include_remat:
    report["temp_ratio_block_remat_over_e2e"] = (
      report["block_step_remat"]["temp_bytes"] / e2e["temp_bytes"]
    )
    report["temp_ratio_e2e_remat_over_e2e"] = (
      report["e2e_step_remat"]["temp_bytes"] / e2e["temp_bytes"]
    )
  return report
