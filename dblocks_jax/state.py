"""The training state of an experiment: fresh, or restored from a run.

state is a pytree of arrays: {"step": [], "shared": {"params", "opt_state"}
or {}, "blocks": [{"params", "opt_state"}] * B, "fixed": {part: state}}. Each
group has its own optimizer state and step count (DESIGN 4.2).
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from dblocks_jax import checkpoint, experiment
from dblocks_jax.blockwise import optim
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.errors import ConfigError, TopologyError


def init_state(exp: experiment.Experiment, tx, blocks=None):
  """-> (graphdefs, state) of a fresh model and optimizer.

  Args:
    exp: the experiment.
    tx: the optimizer.
    blocks: the blocks to hold (None = all); the others' entries are {}
      (a per-block job holds nothing of the blocks it does not train).
  """
  graphdefs, shared, block_params, fixed = parts_lib.split(exp.model)
  held = set(range(len(block_params)) if blocks is None else blocks)

  def group(params):
    return {"params": params, "opt_state": tx.init(params)}

  state = {
    "step": jnp.zeros((), jnp.int32),
    "shared": group(shared) if jax.tree.leaves(shared) else {},
    "blocks": [
      group(p) if b in held else {} for b, p in enumerate(block_params)
    ],
    "fixed": fixed,
  }
  return graphdefs, state


def check_topology(workdir: str, topology: dict, recorded: dict | None):
  """Refuses to resume a run whose block topology differs from the config."""
  if recorded is None or recorded == topology:
    return
  changed = [
    f"{k}: {recorded.get(k)} -> {topology.get(k)}"
    for k in sorted(set(recorded) | set(topology))
    if recorded.get(k) != topology.get(k)
  ]
  raise TopologyError(
    f"workdir {workdir} holds a run with a different topology"
    f" ({'; '.join(changed)}); use a new --workdir or the run's config."
  )


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (its `config.json`)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(
      f"{path} does not exist: {workdir} is not a trained run's workdir."
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f)["config"])


def restore_run(
  config: ml_collections.ConfigDict, workdir: str, *, complete: bool = True
):
  """The newest checkpoint of the run in `workdir`, for evaluation.

  Args:
    config: the run's config.
    workdir: the run.
    complete: require every block (a per-block job's workdir is refused;
      False restores the job's own blocks).

  Returns:
    (experiment, graphdefs, state), with optimizer states restored too.

  Raises:
    ConfigError: there is no checkpoint, or `complete` and the config trains
      some of the blocks only.
    TopologyError: the checkpoint's topology differs from `config`'s.
  """
  workdir = os.path.abspath(workdir)
  trained = (
    tuple(sorted(set(config.blocks.train))) if "blocks" in config else ()
  )
  if complete and trained and len(trained) < config.blocks.num_blocks:
    raise ConfigError(
      f"blocks.train={list(trained)}: {workdir} holds a per-block job, not a"
      " complete model; merge the jobs with --mode=assemble --sources=... and"
      " evaluate the result."
    )
  exp = experiment.build(config)
  graphdefs, state = init_state(
    exp, optim.make_optimizer(config.optimizer), blocks=trained or None
  )
  with checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"), read_only=True
  ) as ckpt:
    if ckpt.latest_step() is None:
      raise ConfigError(
        f"no checkpoint in {workdir}/checkpoints; train first"
        " (--mode=train) or point --workdir at a trained run."
      )
    check_topology(
      workdir, exp.topology(config), ckpt.read_metadata().get("topology")
    )
    state, _ = ckpt.restore(state)
  return exp, graphdefs, state
