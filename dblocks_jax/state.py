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


def init_state(exp: experiment.Experiment, tx):
  """-> (graphdefs, state) of a fresh model and optimizer."""
  graphdefs, shared, blocks, fixed = parts_lib.split(exp.model)

  def group(params):
    return {"params": params, "opt_state": tx.init(params)}

  state = {
    "step": jnp.zeros((), jnp.int32),
    "shared": group(shared) if jax.tree.leaves(shared) else {},
    "blocks": [group(p) for p in blocks],
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


def restore_run(config: ml_collections.ConfigDict, workdir: str):
  """The newest checkpoint of the run in `workdir`, for evaluation.

  Returns:
    (experiment, graphdefs, state), with optimizer states restored too.

  Raises:
    ConfigError: there is no checkpoint.
    TopologyError: the checkpoint's topology differs from `config`'s.
  """
  workdir = os.path.abspath(workdir)
  exp = experiment.build(config)
  graphdefs, state = init_state(exp, optim.make_optimizer(config.optimizer))
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
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
