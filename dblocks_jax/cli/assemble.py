"""`--mode=assemble`: the checkpoints of per-block jobs -> one model.

`assemble(config, workdir, sources)` reads the `config.json` and newest
checkpoint of every source workdir (each a job of `blocks.train=[...]`), and
refuses them unless they agree with each other and with `config`:

* the topology: method, layers, B, layer distribution, partition and
  boundaries, sharing mode;
* the model and diffusion settings (`model.*`, `diffusion.*`);
* the fixed target table of the `independent` mode (compared by value);
* every block trained by exactly one source.

It then writes `workdir` as a run that holds the complete model:
`config.json` (the config with every block, its topology) and a checkpoint
whose step is the sum of the sources' block updates. `--mode=eval` and
`--mode=sample` work on it as on a model trained in one job.
"""

import copy
import json
import os

import chex
import jax
import ml_collections
import numpy as np
from absl import logging

from dblocks_jax import families
from dblocks_jax.errors import ConfigError, TopologyError
from dblocks_jax.families import common, runs
from dblocks_jax.training import checkpoint
from dblocks_jax.training.topology import JOB_FIELDS

_SETTINGS = ("model", "diffusion")


def complete_config(config) -> ml_collections.ConfigDict:
  """`config` with every block trained in one single-group job."""
  full = copy.deepcopy(config)
  with full.unlocked():
    full.blocks.train = ()
    full.parallel.block_groups = 1
  return full


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
  keys = sorted(set(a) | set(b))
  return [
    f"{prefix}{k}: {a.get(k)} vs {b.get(k)}"
    for k in keys
    if a.get(k) != b.get(k)
  ]


def _check_source(source: str, topology: dict, config) -> tuple[int, ...]:
  """Checks one source against the complete config; -> the blocks it holds."""
  recorded = runs.recorded_topology(source)
  model_part = {k: v for k, v in recorded.items() if k not in JOB_FIELDS}
  changed = _differences(model_part, topology)
  if changed:
    raise TopologyError(
      f"{source} was trained with a different topology ({'; '.join(changed)});"
      " assemble jobs of one config."
    )
  run_config = runs.read_run_config(source)
  for section in _SETTINGS:
    ours = json.loads(config[section].to_json_best_effort())
    theirs = json.loads(run_config[section].to_json_best_effort())
    changed = _differences(theirs, ours, prefix=f"{section}.")
    if changed:
      raise ConfigError(
        f"{source} differs from the config in {'; '.join(changed)};"
        " assemble jobs of one config."
      )
  return tuple(recorded.get("trained_blocks", range(topology["num_blocks"])))


def _restore(source: str) -> dict:
  """The newest checkpoint of a job (its own blocks), on the host."""
  run_config = runs.read_run_config(source)
  _, _, trainer = runs.restore_run(
    run_config, source, complete=False, with_optimizer=True
  )
  state = jax.device_get(trainer.state)
  trainer.close()
  return state


def assemble(
  config: ml_collections.ConfigDict, workdir: str, sources: list[str]
) -> dict:
  """Merges per-block job workdirs `sources` into the run `workdir`."""
  if not sources:
    raise ConfigError(
      "--mode=assemble needs --sources=DIR,DIR,...: the workdirs of the"
      " per-block jobs."
    )
  workdir = os.path.abspath(workdir)
  sources = [os.path.abspath(s) for s in sources]
  config = complete_config(config)
  family = families.get(config.model.name)
  topology = common.make_trainer(config, family.build(config), None).topology
  num_blocks = config.blocks.num_blocks

  owner = {}
  for source in sources:
    if not os.path.exists(os.path.join(source, "config.json")):
      raise ConfigError(f"{source} is not a job's workdir (no config.json).")
    for block in _check_source(source, topology, config):
      if block in owner:
        raise ConfigError(
          f"block {block} is trained by both {owner[block]} and {source};"
          " give each block's job once."
        )
      owner[block] = source
  missing = [b for b in range(num_blocks) if b not in owner]
  if missing:
    raise ConfigError(
      f"no source trains block(s) {missing}; add their jobs' workdirs to"
      " --sources."
    )

  states = {source: _restore(source) for source in sources}
  first = states[sources[0]]
  for source in sources[1:]:
    # Bit-identical: the same structure, shapes, dtypes and values (a check
    # that chex.disable_asserts() would switch off, as every chex assertion).
    try:
      chex.assert_trees_all_equal(
        states[source]["fixed"], first["fixed"], strict=True
      )
    except AssertionError as e:
      raise ConfigError(
        f"the target tables of {sources[0]} and {source} differ; the jobs"
        " must share blocks.target_table_seed."
      ) from e

  ckpt_dir = os.path.join(workdir, "checkpoints")
  os.makedirs(workdir, exist_ok=True)
  with checkpoint.Checkpointer(ckpt_dir) as ckpt:
    if ckpt.latest_step() is not None:
      raise ConfigError(
        f"{workdir} already holds checkpoints; assemble into a new --workdir."
      )
    shared = next(
      (s["shared"] for s in states.values() if jax.tree.leaves(s["shared"])),
      {},
    )
    step = sum(int(s["step"]) for s in states.values())
    updates = sum(np.asarray(s["updates"]) for s in states.values())
    state = {
      "step": np.asarray(step, np.int32),
      "updates": np.asarray(updates, np.int32),
      "shared": shared,
      "blocks": [states[owner[b]]["blocks"][b] for b in range(num_blocks)],
      "fixed": first["fixed"],
    }
    runs.write_config(workdir, config, topology)
    ckpt.save(
      step,
      state,
      metadata={"topology": topology, "assembled_from": sources},
      force=True,
    )
  logging.info("Assembled %d blocks from %s.", num_blocks, sources)
  return {
    "step": step,
    "num_blocks": num_blocks,
    "sources": {str(b): owner[b] for b in range(num_blocks)},
  }
