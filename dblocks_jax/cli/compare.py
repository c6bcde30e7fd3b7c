"""`--mode=compare`: DiffusionBlocks and its end-to-end baseline, one command.

Trains the config's block-wise run in `WORKDIR/dblocks` and its baseline
(`families.end_to_end_config`: the same model end to end, for the same number
of layer evaluations) in `WORKDIR/e2e`, each resumable like any run, and
reports side by side the final evaluation (accuracy, FID or BPC), the compiled
training step's memory (XLA `memory_analysis()` temporaries, the activations
and gradients a step needs) and the wall time. Writes
`WORKDIR/compare.json`.
"""

import os
import time

import ml_collections

from dblocks_jax import families
from dblocks_jax.cli import memory
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import train
from dblocks_jax.training import metrics


def compare(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains both runs (or resumes them) and returns the comparison."""
  if config.method != "dblocks":
    raise ConfigError(
      f"--mode=compare starts from a block-wise config; method="
      f"{config.method!r} is already the baseline. Drop :e2e."
    )
  workdir = os.path.abspath(workdir)
  runs = {
    "dblocks": config,
    "e2e": families.end_to_end_config(config),
  }
  result = {"settings": _settings(config)}
  for name, run_config in runs.items():
    start = time.monotonic()
    evaluation = train.train_and_evaluate(
      run_config, os.path.join(workdir, name)
    )
    seconds = time.monotonic() - start
    step = memory.compiled_step_memory(run_config)
    result[name] = {
      "eval": evaluation,
      "wall_seconds": seconds,
      "temp_bytes": step["temp_bytes"],
      "step_param_count": step["step_param_count"],
      "param_count": step["param_count"],
    }
  result["temp_ratio_dblocks_over_e2e"] = (
    result["dblocks"]["temp_bytes"] / result["e2e"]["temp_bytes"]
  )
  metrics.MetricWriter(workdir).write_json("compare.json", result)
  return result


def _settings(config) -> dict:
  b, s = config.blocks, config.sampler
  settings = {
    "num_layers": config.model.num_layers,
    "num_blocks": b.num_blocks,
    "layer_distribution": list(b.layer_distribution) or "equal",
    "partition": b.partition,
  }
  if b.partition == "explicit":
    settings["boundaries"] = list(b.boundaries)
  settings["sigma_sampling"] = b.sigma_sampling
  for section, fields in (
    (config.model, ("readout_token",)),
    (s, ("normalized_table", "estimate")),
  ):
    for field in fields:
      if field in section:  # Classifier fields (the ViT family's).
        settings[field] = section[field]
  settings["inference_steps"] = s.num_steps or b.num_blocks
  settings["note"] = config.note
  return settings


def _quality(evaluation: dict) -> str:
  if "accuracy" in evaluation:
    return f"{100 * evaluation['accuracy']:.2f}%"
  if "fid" in evaluation:
    return f"FID {evaluation['fid']:.2f}"
  if "bpc" in evaluation:
    return f"{evaluation['bpc']:.3f} BPC"
  return "-"


def table(result: dict) -> str:
  """The comparison as a small text table."""
  db, e2e = result["dblocks"], result["e2e"]
  ratio = result["temp_ratio_dblocks_over_e2e"]
  rows = [
    ("", "DiffusionBlocks", "end to end"),
    ("test", _quality(db["eval"]), _quality(e2e["eval"])),
    (
      "step memory (XLA temp)",
      f"{db['temp_bytes'] / 2**20:.1f} MiB ({ratio:.2f}x)",
      f"{e2e['temp_bytes'] / 2**20:.1f} MiB",
    ),
    (
      "parameters in a step",
      f"{db['step_param_count']:,}",
      f"{e2e['step_param_count']:,}",
    ),
    (
      "training steps",
      f"{db['eval']['step']:,}",
      f"{e2e['eval']['step']:,}",
    ),
    (
      "wall time",
      f"{db['wall_seconds']:.0f} s",
      f"{e2e['wall_seconds']:.0f} s",
    ),
  ]
  width = max(len(r[0]) for r in rows)
  lines = [f"{a:<{width}}  {b:<22}  {c}" for a, b, c in rows]
  settings = dict(result["settings"])
  note = settings.pop("note", "")
  lines.append(
    "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())
  )
  if note:
    lines.append(f"why: {note}")
  return "\n".join(lines)
