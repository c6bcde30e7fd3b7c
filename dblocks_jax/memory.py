"""`--mode=memory`: compiled memory of the block step against the end-to-end
step, from XLA's `memory_analysis()`, with no data and no training.

Both steps are lowered and compiled ahead of time on abstract inputs of the
config's batch (the family's `batch_spec`); the report gives XLA's argument,
output and temporary bytes, and the split of the step's inputs into
parameters, optimizer state and batch. XLA temporaries hold the activations
kept for the backward pass, the gradients and scratch space. With
`memory.include_remat`, both steps are also compiled with every layer under
`jax.checkpoint`.

With `parallel.block_groups` = G > 1 the report adds the block-parallel mesh
step (`mesh_step`), compiled for G groups of the devices JAX sees: its
per-device bytes against one device that trains the blocks in turn and so
holds all of them (`sequential_device`).
"""

import copy

import jax
import ml_collections

from dblocks_jax import families
from dblocks_jax.families import common


def _bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def _variant(config, **changes):
  c = copy.deepcopy(config)
  with c.unlocked():
    for path, value in changes.items():
      section, _, field = path.rpartition(".")
      (c[section] if section else c)[field] = value
  return c


def _trainer(config):
  family = families.get(config.model.name)
  experiment = family.build(config)
  return family, common.make_trainer(config, experiment, None)


def compiled_step_memory(config: ml_collections.ConfigDict) -> dict:
  """Compiles the training step of `config` (block 0 if block-wise)."""
  family, trainer = _trainer(common.one_group(config))
  batch = family.batch_spec(config)
  stats = trainer.lower_step(batch, block=0).compile().memory_analysis()
  state = trainer.state
  groups = [state["shared"]]
  if trainer.blockwise:
    groups.append(state["blocks"][0])  # Every block of its shape alike.
  groups = [g for g in groups if g]
  params = [g["params"] for g in groups]
  gradient_bytes = _bytes(params)
  all_params = [state["shared"].get("params", {})] + [
    b["params"] for b in state["blocks"] if b
  ]
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
    "step_param_bytes": gradient_bytes,
    "step_optimizer_state_bytes": _bytes([g["opt_state"] for g in groups]),
    "fixed_bytes": _bytes(state["fixed"]),
    "batch_bytes": _bytes(batch),
    "step_param_count": _count(params),
    "param_count": _count(all_params),
  }


def compiled_mesh_memory(config: ml_collections.ConfigDict) -> dict:
  """Per-device bytes of the block-parallel step against sequential training.

  `mesh_step`: XLA's per-device argument, output and temporary bytes of the
  mesh step (G groups, each one block of the config's batch).
  `sequential_device`: one device training all blocks in turn: it holds
  every block's parameters and optimizer state, and runs the block step.
  `e2e_device`: one device training the end-to-end baseline.
  """
  family, trainer = _trainer(config)
  layout = trainer.layout
  batch = family.batch_spec(config)
  stats = trainer.lower_step(batch, block=0).compile().memory_analysis()
  batch_bytes = _bytes(batch) // layout.data_shards
  mesh_device = {
    "held_state_bytes": int(stats.argument_size_in_bytes) - batch_bytes,
    "batch_bytes": batch_bytes,
    "argument_bytes": int(stats.argument_size_in_bytes),
    "output_bytes": int(stats.output_size_in_bytes),
    "temp_bytes": int(stats.temp_size_in_bytes),
    "alias_bytes": int(stats.alias_size_in_bytes),
  }
  mesh_device["total_bytes"] = (
    mesh_device["argument_bytes"] + mesh_device["temp_bytes"]
  )
  sequential = compiled_step_memory(config)
  _, one = _trainer(_variant(config, **{"parallel.block_groups": 1}))
  state = one.state
  held = _bytes([state["shared"], state["blocks"], state["fixed"]])
  sequential_device = {
    "held_state_bytes": held,
    "temp_bytes": sequential["temp_bytes"],
    "batch_bytes": sequential["batch_bytes"],
    "total_bytes": held + sequential["batch_bytes"] + sequential["temp_bytes"],
  }
  e2e_step = compiled_step_memory(
    _variant(config, method="e2e", **{"parallel.block_groups": 1})
  )
  e2e_device = {
    "held_state_bytes": e2e_step["argument_bytes"] - e2e_step["batch_bytes"],
    "batch_bytes": e2e_step["batch_bytes"],
    "temp_bytes": e2e_step["temp_bytes"],
    "total_bytes": e2e_step["argument_bytes"] + e2e_step["temp_bytes"],
  }
  return {
    "block_groups": layout.num_groups,
    "data_shards": layout.data_shards,
    "blocks_per_group": layout.blocks_per_group,
    "mesh_step": mesh_device,
    "sequential_device": sequential_device,
    "e2e_device": e2e_device,
    "total_ratio_mesh_over_e2e": (
      mesh_device["total_bytes"] / e2e_device["total_bytes"]
    ),
    "total_ratio_mesh_over_sequential": (
      mesh_device["total_bytes"] / sequential_device["total_bytes"]
    ),
  }


def memory_report(config: ml_collections.ConfigDict) -> dict:
  """The block step against the end-to-end step (and both with remat)."""
  variants = {"block_step": "dblocks", "e2e_step": "e2e"}
  report = {
    "batch_size": config.batch_size,
    "backend": jax.default_backend(),
  }
  for remat in (False, True) if config.memory.include_remat else (False,):
    for name, method in variants.items():
      c = _variant(config, method=method, **{"model.remat": remat})
      report[name + ("_remat" if remat else "")] = compiled_step_memory(c)
  block, e2e = report["block_step"], report["e2e_step"]
  report["temp_ratio_block_over_e2e"] = block["temp_bytes"] / e2e["temp_bytes"]
  report["param_count"] = block["param_count"]
  report["num_blocks"] = config.blocks.num_blocks
  if config.parallel.block_groups > 1:
    report["parallel"] = compiled_mesh_memory(config)
  if config.memory.include_remat:
    report["temp_ratio_block_remat_over_e2e"] = (
      report["block_step_remat"]["temp_bytes"] / e2e["temp_bytes"]
    )
    report["temp_ratio_e2e_remat_over_e2e"] = (
      report["e2e_step_remat"]["temp_bytes"] / e2e["temp_bytes"]
    )
  return report
