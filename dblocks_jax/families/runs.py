"""A run's workdir: its config file, and reopening a trained run.

The workdir is the run: `config.json` (the config and the topology),
`metrics.jsonl`, `checkpoints/`, `eval.json`. Re-running the same command
resumes; a changed topology is refused.
"""

import copy
import json
import os

import ml_collections

from dblocks_jax import families
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import common
from dblocks_jax.training.topology import check_topology

CONFIG_FILE = "config.json"
# The families with `model.attention_impl`: runs saved before it had dense.
ATTENTION_FAMILIES = ("ar", "recurrent", "vit", "dit", "mdm")


def write_config(workdir: str, config, topology: dict) -> None:
  """Writes config.json, refusing a workdir whose run has another topology."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      check_topology(workdir, topology, json.load(f).get("topology"))
  payload = {
    "config": json.loads(config.to_json_best_effort()),
    "topology": topology,
  }
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, path)


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (its `config.json`)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise ConfigError(
      f"{path} does not exist: {workdir} is not a trained run's workdir."
    )
  with open(path) as f:
    return _upgrade(ml_collections.ConfigDict(json.load(f)["config"]))


def _upgrade(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fields that config.json files written before them lack, as those runs
  had them: float32 compute and parameters; a boolean model.remat becomes
  its policy name ("full" or "none"); no host offload; dense attention
  (`model.attention_impl`); the AR layers' norms and modulation kept for
  backward (`model.lean_backward`); the token DiT's learned position table
  (`model.positions`)."""
  blocks = config.get("blocks")
  if blocks is not None and "offload" not in blocks:
    blocks["offload"] = False
  model = config.get("model")
  if model is None:
    return config
  for field in ("dtype", "param_dtype"):
    if field not in model:
      model[field] = "float32"
  if model.get("name") in ATTENTION_FAMILIES and "attention_impl" not in model:
    model["attention_impl"] = "dense"
  if model.get("name") in ("ar", "recurrent") and "loss_chunk" not in model:
    model["loss_chunk"] = 0  # The dense logits of the runs before it.
  ar_family = model.get("name") in ("ar", "recurrent")
  if ar_family and "lean_backward" not in model:
    model["lean_backward"] = False  # Kept, as before.
  if model.get("name") == "mdm" and "positions" not in model:
    model["positions"] = "learned"  # The only positions before the field.
  if isinstance(model.get("remat"), bool):
    remat = "full" if model.remat else "none"
    del model["remat"]  # A ConfigDict field keeps its type: set anew.
    model["remat"] = remat
  return config


def recorded_topology(workdir: str) -> dict:
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    return json.load(f)["topology"]


def restore_run(
  config,
  workdir: str,
  *,
  complete: bool = True,
  step: int | None = None,
  with_optimizer: bool = False,
):
  """The newest checkpoint of the run in `workdir`, for evaluation.

  Args:
    config: the run's config.
    workdir: the run (read only).
    complete: require every block (a per-block job's workdir is refused;
      False restores the job's own blocks).
    step: the checkpoint to load; None: the newest.
    with_optimizer: restore the optimizer states too (the config's
      optimizer must be the one that trained the run); False: an
      inference-only trainer with the parameters.

  Returns:
    (family, experiment, trainer) with the checkpoint loaded; the trainer
    writes nothing.

  Raises:
    ConfigError: there is no checkpoint, or `complete` and the config trains
      some of the blocks only.
    TopologyError: the checkpoint's topology differs from `config`'s.
  """
  workdir = os.path.abspath(workdir)
  trained = tuple(sorted(set(config.blocks.train)))
  if complete and trained and len(trained) < config.blocks.num_blocks:
    raise ConfigError(
      f"blocks.train={list(trained)}: {workdir} holds a per-block job, not a"
      " complete model; merge the jobs with --mode=assemble --sources=... and"
      " evaluate the result."
    )
  family = families.get(config.model.name)
  experiment = family.build(config, held_blocks=trained or None)
  one_group = copy.deepcopy(config)
  with one_group.unlocked():
    one_group.parallel.block_groups = 1  # Evaluation needs no mesh.
  trainer = common.make_trainer(
    one_group, experiment, None, inference=not with_optimizer
  )
  trainer.load_checkpoint(workdir, step=step)
  return family, experiment, trainer
