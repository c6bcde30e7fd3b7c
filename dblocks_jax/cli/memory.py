"""`--mode=memory`: compiled memory of the block step against the end-to-end
step, from XLA's `memory_analysis()`, with no data and no training.

Both steps are lowered and compiled ahead of time on abstract inputs of the
config's batch (the family's `batch_spec`); the report gives XLA's argument,
output and temporary bytes, and the split of the step's inputs into
parameters, optimizer state and batch. XLA temporaries hold the activations
kept for the backward pass, the gradients and scratch space. Both steps are
also compiled with each `model.remat` policy of `memory.remat_policies`
("full": every layer under `jax.checkpoint`, saving nothing; or a
`jax.checkpoint_policies` name), reported as `block_step_remat_<policy>`
and `e2e_step_remat_<policy>` beside `block_step` and `e2e_step` (none).

With `parallel.block_groups` = G > 1 the report adds the block-parallel mesh
step (`mesh_step`), compiled for G groups of the devices JAX sees: its
per-device bytes against one device that trains the blocks in turn and so
holds all of them (`sequential_device`).

`attention` names the attention path each step was compiled with (the
family's `model.attention_impl` resolved on this platform, e.g. "chunked
(auto on cpu)" or "dense (auto on cpu, attention dropout)"; "dense" for a
family without the switch).

`offload` gives the device bytes of the block-wise run without and with
`blocks.offload` (the blocks not being trained in host memory), from the
state's sizes and the compiled block step (`offload_memory`).
"""

import jax
import ml_collections

from dblocks_jax import errors, families
from dblocks_jax.families import common
from dblocks_jax.nn import remat as remat_lib


def _bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


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
    # Each group's parameters, optimizer state and rest (`offload_memory`).
    "shared_state_bytes": _bytes(state["shared"]),
    "block_state_bytes": [_bytes(b) for b in state["blocks"] if b],
    "data_shards": trainer.layout.data_shards,
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
  _, one = _trainer(common.with_changes(config, {"parallel.block_groups": 1}))
  state = one.state
  held = _bytes([state["shared"], state["blocks"], state["fixed"]])
  sequential_device = {
    "held_state_bytes": held,
    "temp_bytes": sequential["temp_bytes"],
    "batch_bytes": sequential["batch_bytes"],
    "total_bytes": held + sequential["batch_bytes"] + sequential["temp_bytes"],
  }
  e2e_step = compiled_step_memory(
    common.with_changes(config, {"method": "e2e", "parallel.block_groups": 1})
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


def offload_memory(config: ml_collections.ConfigDict, step: dict) -> dict:
  """Bytes per device of a block-wise run without and with `blocks.offload`.

  `step` is `compiled_step_memory` of the block step. The state a device
  holds (replicated), from the arrays' sizes: without offload every block's
  parameters, optimizer state and rest, plus the shared and fixed parts;
  with offload one block's (the largest), plus the shared and fixed parts,
  the other blocks in host memory (`host_state_bytes`). Each total adds the
  device's share of the batch and XLA's temporaries (`memory_analysis()` of
  block 0's step), the same in both: a step reads only its own block. On
  the CPU backend the host memory is the device's RAM (`host_is_device`):
  nothing is saved there.
  """
  from dblocks_jax.training import placement as placement_lib

  blocks = step["block_state_bytes"]
  parts = step["shared_state_bytes"] + step["fixed_bytes"]
  batch_bytes = step["batch_bytes"] // step["data_shards"]
  per_step = batch_bytes + step["temp_bytes"]
  held = {"without": parts + sum(blocks), "with": parts + max(blocks)}
  out = {
    "enabled": bool(config.blocks.offload),
    "host_memory_kind": placement_lib.host_memory_kind(jax.devices()[0]),
    "host_is_device": jax.default_backend() == "cpu",
  }
  for name, bytes_ in held.items():
    out[name] = {
      "held_state_bytes": bytes_,
      "batch_bytes": batch_bytes,
      "temp_bytes": step["temp_bytes"],
      "total_bytes": bytes_ + per_step,
    }
  out["with"]["host_state_bytes"] = sum(blocks) - max(blocks)
  out["held_ratio_with_over_without"] = held["with"] / held["without"]
  out["total_ratio_with_over_without"] = (
    out["with"]["total_bytes"] / out["without"]["total_bytes"]
  )
  return out


def attention_path(config: ml_collections.ConfigDict) -> str:
  """The attention path of `config`'s training step: the family's
  `attention_path`, or "dense" for a family whose attention has no
  switch."""
  family = families.get(config.model.name)
  if hasattr(family, "attention_path"):
    return family.attention_path(config)
  return "dense (the family has no model.attention_impl)"


def remat_policies(config: ml_collections.ConfigDict) -> list[str]:
  """The policies the report compiles: "none", then each of
  `memory.remat_policies` (checked)."""
  policies = ["none"]
  for policy in config.memory.remat_policies:
    with errors.config_fields({"remat": "memory.remat_policies"}):
      name = remat_lib.remat_name(policy)
    if name not in policies:
      policies.append(name)
  return policies


def memory_report(config: ml_collections.ConfigDict) -> dict:
  """The block step against the end-to-end step, without remat and with
  each policy of `memory.remat_policies`."""
  variants = {"block_step": "dblocks", "e2e_step": "e2e"}
  report = {
    "batch_size": config.batch_size,
    "backend": jax.default_backend(),
  }
  policies = remat_policies(config)
  report["attention"] = {
    name: attention_path(common.with_changes(config, {"method": method}))
    for name, method in variants.items()
  }
  for policy in policies:
    suffix = "" if policy == "none" else f"_remat_{policy}"
    for name, method in variants.items():
      c = common.with_changes(config, {"method": method, "model.remat": policy})
      report[name + suffix] = compiled_step_memory(c)
  block, e2e = report["block_step"], report["e2e_step"]
  report["temp_ratio_block_over_e2e"] = block["temp_bytes"] / e2e["temp_bytes"]
  report["param_count"] = block["param_count"]
  report["num_blocks"] = config.blocks.num_blocks
  report["offload"] = offload_memory(config, block)
  if config.parallel.block_groups > 1:
    report["parallel"] = compiled_mesh_memory(config)
  for policy in policies[1:]:
    for name, short in (("block_step", "block"), ("e2e_step", "e2e")):
      report[f"temp_ratio_{short}_remat_{policy}_over_e2e"] = (
        report[f"{name}_remat_{policy}"]["temp_bytes"] / e2e["temp_bytes"]
      )
  return report


def summary(report: dict) -> list[str]:
  """The lines `--mode=memory` prints for a `memory_report`: the attention
  path of each step, the temporaries' ratio under each remat policy, the
  state held with and without offload, and the mesh's ratio when there is
  one."""
  block, e2e = report["block_step"], report["e2e_step"]
  lines = []
  if "attention" in report:  # Reports written before the field lack it.
    attention = report["attention"]
    lines.append(
      f"attention: block step {attention['block_step']}; e2e step"
      f" {attention['e2e_step']}"
    )
  lines.append(
    f"temp bytes block/e2e: {report['temp_ratio_block_over_e2e']:.3f}"
    f" ({block['temp_bytes']:,} / {e2e['temp_bytes']:,})"
  )
  for key in report:
    if key.startswith("block_step_remat_"):
      policy = key.removeprefix("block_step_remat_")
      b, e = report[key], report[f"e2e_step_remat_{policy}"]
      lines.append(
        f"  remat {policy}: block {b['temp_bytes']:,}, e2e"
        f" {e['temp_bytes']:,}; block/e2e(no remat)"
        f" {b['temp_bytes'] / e2e['temp_bytes']:.3f}"
      )
  offload = report["offload"]
  without, with_ = offload["without"], offload["with"]
  where = offload["host_memory_kind"] or "no host memory kind"
  lines.append(
    f"state held on the device, without / with blocks.offload:"
    f" {without['held_state_bytes']:,} / {with_['held_state_bytes']:,}"
    f" ({offload['held_ratio_with_over_without']:.3f}x;"
    f" {with_['host_state_bytes']:,} in {where})"
    + (
      "; on CPU the host is the device: nothing is saved"
      if offload["host_is_device"]
      else ""
    )
  )
  if "parallel" in report:
    p = report["parallel"]
    lines.append(
      f"per-device bytes, mesh of {p['block_groups']} groups / one device"
      f" training the blocks in turn:"
      f" {p['total_ratio_mesh_over_sequential']:.3f}"
      f" ({p['mesh_step']['total_bytes']:,} /"
      f" {p['sequential_device']['total_bytes']:,})"
    )
  return lines
