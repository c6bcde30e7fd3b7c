"""`--mode=plan`: the number of blocks, per-device batch and remat policy
that fit one device, from compiled memory, with no data and no training.

Each candidate is a B of `plan.num_blocks` (its layers split equally, or as
evenly as they go: the first blocks take one layer more), a per-device
batch of `plan.per_device_batch` and a `model.remat` policy of `plan.remat`.
Its block step is lowered and compiled ahead of time for one device, on
abstract inputs: the model is built with `nnx.eval_shape` (no parameter is
ever allocated), the optimizer state with `jax.eval_shape`, the batch is the
family's `batch_spec`; the step is the trainer's (`steps.make_step`, as
`Trainer.lower_step` builds it, for one device group). Every distinct
block size of an uneven split is compiled.

Device bytes, from XLA's `memory_analysis()` (arguments: the trained
block's parameters, optimizer state and rest, the shared and fixed parts
and the batch; plus the temporaries), in two measures:
  held_all  one device training every block in turn holds all of them:
            the step's bytes + every other block's parameters, optimizer
            state and rest (the largest block's step; `memory.py`'s
            `offload_memory` "without");
  offload   `blocks.offload`: the other blocks wait in host memory, the
            device holds the step's bytes only.
A candidate fits when its measure is at most `plan.device_memory`: held_all,
or offload when `blocks.offload` is true. Bytes are those of the backend
that compiles: plan on the kind of device that will train (XLA:CPU, for
one, barely cuts temporaries with remat; docs/results.md).

GFLOP per example: XLA's FLOPs (`flops.compiled_flops`) of training every
block once on one example, the sum over the blocks of their step's FLOPs
over the batch. It counts what remat recomputes, the parts outside the
layers that every block's step runs again, and the optimizer updates.

The recommendation is the candidate that fits and does the least
recomputation: the fewest FLOPs per example, then the larger batch, then
fewer blocks. FLOPs within `plan.flops_tolerance` (a fraction) of the
fewest count as a tie: the parts outside the layers that each block's step
repeats and the optimizer's share of a step move the count by well under
1%, what remat recomputes by a third, so a tie means no recomputation
worth a smaller batch. `plan.json` in the workdir keeps every candidate,
the measure the fit used, the recommendation and its command line.

Sequence length (`plan.seq_len_memories`, e.g. ("16GiB", "80GiB")): the
largest sequence a step fits in each memory, for the block step (the fit
measure above, at the config's B and remat) and the end-to-end step (its
arguments and temporaries), at the first candidate batch. The length is
`data.seq_len` (and `model.max_seq_len`) for the language models and the
patch tokens (H/p)^2 for the image models (the image side varies, square,
a multiple of the patch). A step's bytes grow with the length: the search
starts at the config's length, doubles (or halves) to bracket each memory,
then bisects `plan.seq_len_bisections` times; the report gives the largest
length that fits and the smallest probed that does not (`max_sequence`).
"""

import dataclasses
import json
import os
import re
import shlex
import time

import jax
import ml_collections
from absl import logging
from flax import nnx

from dblocks_jax import errors, families
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.blockwise import steps
from dblocks_jax.blockwise.parts import BlockwiseModel
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import common, flops
from dblocks_jax.nn import remat as remat_lib

GIB = 2**30
UNITS = {
  "B": 1,
  "KB": 10**3,
  "MB": 10**6,
  "GB": 10**9,
  "TB": 10**12,
  "KiB": 2**10,
  "MiB": 2**20,
  "GiB": 2**30,
  "TiB": 2**40,
}
# The fields a candidate sets, overriding the command line's own.
CANDIDATE_FIELDS = (
  "blocks.num_blocks",
  "blocks.layer_distribution",
  "batch_size",
  "model.remat",
)


def parse_bytes(text: str, field: str = "plan.device_memory") -> int:
  """A memory size in bytes: "16GiB", "80GB", "512MiB", "1.5TiB" (GB =
  10^9 bytes, GiB = 2^30)."""
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*", str(text))
  if not match or float(match.group(1)) <= 0:
    raise ConfigError(
      f"{field}={text!r} is not a memory size; write a positive number and"
      " a unit, e.g. 16GiB, 80GB or 512MiB."
    )
  return int(float(match.group(1)) * UNITS[match.group(2)])


def most_even(num_layers: int, num_blocks: int) -> tuple[int, ...]:
  """L layers in B blocks as evenly as they go, the first blocks one layer
  more: (3, 2) -> (2, 1); (24, 6) -> (4,) * 6."""
  q, r = divmod(num_layers, num_blocks)
  return (q + 1,) * r + (q,) * (num_blocks - r)


def _bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def abstract_experiment(config) -> families.Experiment:
  """The experiment of `config` with its model built by `nnx.eval_shape`:
  every parameter a `jax.ShapeDtypeStruct`, nothing allocated."""
  family = families.get(config.model.name)
  built = {}

  def build():
    experiment = family.build(config)
    built["experiment"] = experiment
    model = experiment.model
    return model.shared, model.blocks, model.fixed

  shared, blocks, fixed = nnx.eval_shape(build)
  model = BlockwiseModel(shared, list(blocks), fixed)
  return dataclasses.replace(built["experiment"], model=model)


def _compiled_block_step(config, experiment, graphdefs, groups, block: int):
  """The block step of `block` compiled for one device on abstract inputs
  (`steps.make_step`, the step the trainer runs, without a mesh)."""
  family = families.get(config.model.name)
  tx, schedule = common.optimizer_from_config(config)
  step = steps.make_step(
    experiment.task,
    graphdefs,
    experiment.plan,
    block,
    tx,
    clip_norm=config.optimizer.clip_norm,
    accumulation_steps=config.accumulation_steps,
    learning_rate_fn=schedule,
  )
  return step.lower(
    groups["blocks"][block] if groups["blocks"] else {},
    groups["shared"],
    groups["fixed"],
    family.batch_spec(config),
    jax.random.key(0),
    block,
    0,
  ).compile()


def _abstract_groups(config):
  """(experiment, graphdefs, groups): the model of `config` split into its
  shared, block and fixed groups with their optimizer states, abstract."""
  experiment = abstract_experiment(config)
  graphdefs, shared, blocks, fixed = parts_lib.split(experiment.model)
  tx, _ = common.optimizer_from_config(config)

  def group(arrays):
    return jax.eval_shape(lambda a: steps.group_state(a, tx), arrays)

  groups = {
    "shared": group(shared) if jax.tree.leaves(shared["params"]) else {},
    "blocks": [group(b) for b in blocks],
    "fixed": fixed,
  }
  return experiment, graphdefs, groups


def e2e_step_bytes(config) -> int:
  """Device bytes of the end-to-end step of `config` (method="e2e"): its
  arguments (every parameter, the optimizer state, the batch) and
  temporaries, compiled for one device on abstract inputs."""
  experiment, graphdefs, groups = _abstract_groups(config)
  compiled = _compiled_block_step(config, experiment, graphdefs, groups, 0)
  stats = compiled.memory_analysis()
  return int(stats.argument_size_in_bytes + stats.temp_size_in_bytes)


def candidate_cost(config) -> dict:
  """Device bytes and FLOPs of one candidate (`config` sets B, its layer
  distribution, the per-device batch as `batch_size` and `model.remat`)."""
  experiment, graphdefs, groups = _abstract_groups(config)
  block_bytes = [_bytes(b) for b in groups["blocks"]]
  sizes = experiment.plan.layers_per_block
  held_all, offload, step_flops = 0, 0, 0.0
  for size in sorted(set(sizes), reverse=True):
    block = sizes.index(size)  # Blocks of one size share one step.
    compiled = _compiled_block_step(
      config, experiment, graphdefs, groups, block
    )
    stats = compiled.memory_analysis()
    step_bytes = int(stats.argument_size_in_bytes + stats.temp_size_in_bytes)
    others = sum(block_bytes) - block_bytes[block]
    held_all = max(held_all, step_bytes + others)
    offload = max(offload, step_bytes)
    step_flops += sizes.count(size) * flops.compiled_flops(compiled)
  return {
    "held_all_bytes": held_all,
    "offload_bytes": offload,
    "flops_per_example": step_flops / config.batch_size,
  }


def _checked(values, field: str) -> list[int]:
  values = list(values)
  if not values or any(not isinstance(v, int) or v < 1 for v in values):
    raise ConfigError(
      f"{field}={tuple(values)} must list positive integers, e.g. (1, 2, 4)."
    )
  return sorted(set(values))


def _devices(config) -> int:
  return int(config.plan.devices) or jax.device_count()


def batch_candidates(config) -> list[int]:
  """`plan.per_device_batch`, or batch_size / devices and its first
  `plan.batch_halvings` halves; largest first."""
  p = config.plan
  if len(p.per_device_batch):
    values = _checked(p.per_device_batch, "plan.per_device_batch")
  else:
    first = max(config.batch_size // _devices(config), 1)
    values = {max(first >> i, 1) for i in range(int(p.batch_halvings) + 1)}
  return sorted(values, reverse=True)


def remat_candidates(config) -> list[str]:
  """The checked policy names of `plan.remat`."""
  names = []
  for policy in config.plan.remat:
    with errors.config_fields({"remat": "plan.remat"}):
      name = remat_lib.remat_name(policy)
    if name not in names:
      names.append(name)
  if not names:
    raise ConfigError("plan.remat=() is empty; list policies, e.g. ('none',).")
  return names


def _num_layers(config) -> int:
  """The layers the blocks split (for the recurrent LM: core and coda)."""
  return abstract_experiment(config).plan.num_layers


def candidates(config, num_layers: int) -> tuple[list[dict], list[dict]]:
  """(candidates, skipped) over `num_layers` layers. A candidate: B
  (num_blocks), layers_per_block, per_device_batch (descending within a B
  and policy) and remat; a skipped B or batch says why."""
  b = config.blocks
  batches = batch_candidates(config)
  policies = remat_candidates(config)
  out, skipped = [], []
  for num_blocks in _checked(config.plan.num_blocks, "plan.num_blocks"):
    if num_blocks > num_layers:
      reason = f"more blocks than the {num_layers} layers"
      skipped.append({"num_blocks": num_blocks, "reason": reason})
      continue
    if b.partition == "explicit" and num_blocks != len(b.boundaries) - 1:
      reason = "blocks.boundaries (partition=explicit) fix B"
      skipped.append({"num_blocks": num_blocks, "reason": reason})
      continue
    for policy in policies:
      for batch in batches:
        out.append(
          {
            "num_blocks": num_blocks,
            "layers_per_block": list(most_even(num_layers, num_blocks)),
            "per_device_batch": batch,
            "remat": policy,
          }
        )
  for batch in batches:
    if batch % config.accumulation_steps:
      reason = (
        f"not a multiple of accumulation_steps={config.accumulation_steps}"
      )
      skipped.append({"per_device_batch": batch, "reason": reason})
  out = [
    r for r in out if not r["per_device_batch"] % config.accumulation_steps
  ]
  if not out:
    raise ConfigError(
      f"plan.num_blocks={tuple(config.plan.num_blocks)} and"
      f" plan.per_device_batch leave no candidate ({skipped[0]['reason']});"
      f" list B of at most {num_layers} and batches divisible by"
      f" accumulation_steps={config.accumulation_steps}."
    )
  return out, skipped


def _candidate_config(config, candidate: dict):
  """`config` with the candidate's B, layer distribution, batch (one
  device's) and remat policy."""
  distribution = candidate["layers_per_block"]
  even = len(set(distribution)) == 1
  return common.with_changes(
    config,
    {
      "blocks.num_blocks": candidate["num_blocks"],
      "blocks.layer_distribution": () if even else tuple(distribution),
      "batch_size": candidate["per_device_batch"],
      "model.remat": candidate["remat"],
    },
  )


def command(config, candidate: dict, argv, workdir: str) -> str:
  """The command line that trains `candidate`: `argv`'s --config and its
  overrides (minus plan.* and the candidate's fields), the candidate's
  fields (batch_size: the per-device batch x `plan.devices`) and a
  --workdir."""
  kept = ["python", "-m", "dblocks_jax.main"]
  for arg in argv:
    name = arg.split("=", 1)[0]
    field = name.removeprefix("--config.")
    if name == "--config" or (
      name.startswith("--config.")
      and not field.startswith("plan.")
      and field not in CANDIDATE_FIELDS
    ):
      kept.append(arg)
  if not any(a.startswith("--config=") for a in kept):
    kept.insert(3, "--config=CONFIG")
  distribution = candidate["layers_per_block"]
  if len(set(distribution)) > 1:
    kept.append(
      "--config.blocks.layer_distribution=("
      + ",".join(str(n) for n in distribution)
      + ")"
    )
  elif len(config.blocks.layer_distribution):
    kept.append("--config.blocks.layer_distribution=()")
  kept += [
    f"--config.blocks.num_blocks={candidate['num_blocks']}",
    f"--config.batch_size={candidate['batch_size']}",
    f"--config.model.remat={candidate['remat']}",
    f"--workdir={os.path.join(workdir, 'train')}",
  ]
  return shlex.join(kept)


def recommend(fitting: list[dict], tolerance: float) -> dict:
  """The least recomputation: of the candidates within `tolerance` (a
  fraction) of the fewest FLOPs per example, the larger batch, then fewer
  blocks, then the fewer FLOPs."""
  least = min(r["gflop_per_example"] for r in fitting)
  tied = [
    r for r in fitting if r["gflop_per_example"] <= least * (1 + tolerance)
  ]
  return min(
    tied,
    key=lambda r: (
      -r["per_device_batch"],
      r["num_blocks"],
      r["gflop_per_example"],
    ),
  )


def _search(rows: list[dict], fits) -> None:
  """Settles which of `rows` (one B and policy, ascending batches) fit with
  the fewest compiles: the smallest batch first, then a bisection for the
  largest that fits. A batch above one that does not fit does not fit
  either, one below a batch that fits fits too (a step's bytes grow with
  its batch); `fits(row)` compiles a row, the others get a `note`."""
  lo, hi = 0, len(rows) - 1
  mid = 0
  while lo <= hi:
    if fits(rows[mid]):
      for row in rows[lo:mid]:
        row.update(compiled=False, fits=True, note="a larger batch fits")
      lo = mid + 1
    else:
      for row in rows[mid + 1 : hi + 1]:
        note = "a smaller batch does not fit"
        row.update(compiled=False, fits=False, note=note)
      hi = mid - 1
    mid = (lo + hi + 1) // 2


def sequence_length(config) -> int:
  """The config's sequence length: `data.seq_len` (language models) or
  the patch tokens per side of a square image (image models; the
  length is its square)."""
  if "seq_len" in config.data:
    return int(config.data.seq_len)
  return int(config.data.image_shape[0]) // int(config.model.patch_size)


def tokens_of(config, size: int) -> int:
  """The tokens of a sequence of `size` (`sequence_length`'s measure)."""
  return size if "seq_len" in config.data else size * size


def with_sequence_length(config, size: int):
  """`config` at sequence length `size` (`sequence_length`'s measure):
  data.seq_len and model.max_seq_len, or a square image of `size` patches
  a side (the synthetic images' shape too)."""
  if "seq_len" in config.data:
    return common.with_changes(
      config, {"data.seq_len": size, "model.max_seq_len": size}
    )
  side = size * int(config.model.patch_size)
  shape = (side, side, int(config.data.image_shape[-1]))
  return common.with_changes(
    config,
    {"data.image_shape": shape, "data.synthetic_image_shape": shape},
  )


def largest_fitting(bytes_at, start: int, capacities, bisections: int):
  """{capacity: (largest size that fits or 0, smallest probed size that
  does not or None)} for sizes >= 1, with `bytes_at(size)` increasing in
  the size (memoized: each size compiles once). From `start`, doubles up
  or halves down to bracket each capacity, then bisects `bisections`
  times; a size beyond 2^24 tokens' worth stops the doubling."""
  probed = {}

  def fits(size, capacity):
    if size not in probed:
      probed[size] = bytes_at(size)
    return probed[size] <= capacity

  out = {}
  for capacity in sorted(capacities):
    lo, hi = 0, None  # lo fits (0: nothing does); hi does not.
    size = max(start, 1)
    while True:
      if fits(size, capacity):
        lo = size
        if hi is not None or size >= 2**24:
          break
        size *= 2
      else:
        hi = size
        if lo or size == 1:
          break
        size //= 2
    for _ in range(bisections):
      if hi is None or hi - lo <= 1:
        break
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if fits(mid, capacity) else (lo, mid)
    out[capacity] = (lo, hi)
  return out, probed


def max_sequence(config, memories) -> dict:
  """The largest sequence length whose block step and end-to-end step fit
  each of `memories` ("16GiB", ...), at the first candidate batch (module
  docstring). Returns {"batch", "start", "measure", "rows": [{"step",
  "memory", "max_tokens", "over_tokens", "probes"}]}."""
  capacities = {parse_bytes(m, "plan.seq_len_memories"): m for m in memories}
  batch = batch_candidates(config)[0]
  measure = "offload" if config.blocks.offload else "held_all"
  base = common.with_changes(config, {"batch_size": batch})
  start = sequence_length(config)
  steps_bytes = {
    "block": lambda c: candidate_cost(c)[f"{measure}_bytes"],
    "e2e": lambda c: e2e_step_bytes(common.with_changes(c, {"method": "e2e"})),
  }
  rows = []
  for step, bytes_of in steps_bytes.items():

    def bytes_at(size, bytes_of=bytes_of, step=step):
      started = time.perf_counter()
      n = bytes_of(with_sequence_length(base, size))
      logging.info(
        "plan: %s step, %d tokens: %.3f GiB; compiled in %.1f s",
        step,
        tokens_of(config, size),
        n / GIB,
        time.perf_counter() - started,
      )
      return n

    found, probed = largest_fitting(
      bytes_at, start, capacities, int(config.plan.seq_len_bisections)
    )
    for capacity, (lo, hi) in found.items():
      rows.append(
        {
          "step": step,
          "memory": capacities[capacity],
          "max_tokens": tokens_of(config, lo) if lo else 0,
          "over_tokens": None if hi is None else tokens_of(config, hi),
          "probes": {tokens_of(config, k): v for k, v in probed.items()},
        }
      )
  return {
    "batch": batch,
    "start_tokens": tokens_of(config, start),
    "measure": measure,
    "rows": rows,
  }


def sequence_table(report: dict, attention: str) -> str:
  """The `max_sequence` report, one row per step and memory."""
  lines = [
    f"largest sequence (tokens) at batch {report['batch']} (the config's:"
    f" {report['start_tokens']}); block step measure"
    f" {report['measure']}; attention {attention}",
    f"{'step':>6} {'memory':>8} {'fits':>9} {'not':>9}",
  ]
  for r in report["rows"]:
    over = "-" if r["over_tokens"] is None else f"{r['over_tokens']:,}"
    lines.append(
      f"{r['step']:>6} {r['memory']:>8} {r['max_tokens']:>9,} {over:>9}"
    )
  return "\n".join(lines)


def plan(config: ml_collections.ConfigDict, workdir: str, argv=()) -> dict:
  """Compiles the candidates, writes `workdir/plan.json` and returns it.

  Within a B and a policy, the batches are settled with the fewest
  compiles (`_search`): the ones not compiled fit because a larger batch
  fits, or do not because a smaller one does not. The largest batch that
  fits is always compiled, and the smaller ones cost as many FLOPs per
  example or more (the optimizer's update is shared by fewer examples),
  so the recommendation is always a compiled candidate.

  Args:
    config: the run's config (its `plan.*` fields).
    workdir: where plan.json goes.
    argv: the command line's arguments (for the recommended command).

  Raises:
    ConfigError: a bad `plan.*` value, or a baseline (method="e2e").
  """
  if config.method != "dblocks":
    raise ConfigError(
      f"method={config.method!r}: --mode=plan sizes block-wise runs; drop"
      " :e2e (or set method='dblocks')."
    )
  capacity = parse_bytes(config.plan.device_memory)
  offload = bool(config.blocks.offload)
  measure = "offload" if offload else "held_all"
  devices = _devices(config)
  num_layers = _num_layers(config)
  rows, skipped = candidates(config, num_layers)

  def fits(row) -> bool:
    start = time.perf_counter()
    cost = candidate_cost(_candidate_config(config, row))
    logging.info(
      "plan: B=%d, batch %d, remat %s: %.3f GiB (all), %.3f GiB (offload),"
      " %.4g GFLOP per example; compiled in %.1f s",
      row["num_blocks"],
      row["per_device_batch"],
      row["remat"],
      cost["held_all_bytes"] / GIB,
      cost["offload_bytes"] / GIB,
      cost["flops_per_example"] / 1e9,
      time.perf_counter() - start,
    )
    row.update(
      compiled=True,
      held_all_bytes=cost["held_all_bytes"],
      offload_bytes=cost["offload_bytes"],
      gflop_per_example=cost["flops_per_example"] / 1e9,
      fits=cost[f"{measure}_bytes"] <= capacity,
    )
    return row["fits"]

  groups = {}
  for row in rows:
    row["batch_size"] = row["per_device_batch"] * devices
    groups.setdefault((row["num_blocks"], row["remat"]), []).append(row)
  for group in groups.values():
    _search(sorted(group, key=lambda r: r["per_device_batch"]), fits)
  compiled = [r for r in rows if r["compiled"]]
  fitting = [r for r in compiled if r["fits"]]
  result = {
    "device_memory": config.plan.device_memory,
    "device_memory_bytes": capacity,
    "fit_measure": measure,
    "flops_tolerance": float(config.plan.flops_tolerance),
    "blocks_offload": offload,
    "backend": jax.default_backend(),
    "devices": devices,
    "model": config.model.name,
    "num_layers": num_layers,
    "num_compiled": len(compiled),
    "candidates": rows,
    "skipped": skipped,
    "recommendation": None,
    "command": None,
  }
  unit, size = _unit(capacity)
  if fitting:
    best = recommend(fitting, float(config.plan.flops_tolerance))
    result["recommendation"] = best
    result["command"] = command(config, best, argv, workdir)
    result["message"] = (
      f"recommended: B={best['num_blocks']},"
      f" {best['per_device_batch']} examples per device, remat"
      f" {best['remat']} ({best[measure + '_bytes'] / size:.2f} of"
      f" {capacity / size:.2f} {unit},"
      f" {best['gflop_per_example']:.3g} GFLOP per example):"
    )
  else:
    result["message"] = nothing_fits(config, compiled, capacity, measure)
  if len(config.plan.seq_len_memories):
    from dblocks_jax.cli import memory

    result["max_sequence"] = max_sequence(config, config.plan.seq_len_memories)
    result["max_sequence"]["attention"] = memory.attention_path(config)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "plan.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  result["path"] = path
  return result


def _unit(capacity: int) -> tuple[str, int]:
  """GiB, or MiB for a device of less than a GiB."""
  return ("GiB", GIB) if capacity >= GIB else ("MiB", 2**20)


def nothing_fits(config, rows, capacity: int, measure: str) -> str:
  """One line: the smallest candidate's bytes and what to change."""
  unit, size = _unit(capacity)
  small = min(rows, key=lambda r: r[measure + "_bytes"])
  line = (
    f"nothing fits in plan.device_memory={config.plan.device_memory}: the"
    f" smallest candidate (B={small['num_blocks']},"
    f" {small['per_device_batch']} examples per device, remat"
    f" {small['remat']}) needs {small[measure + '_bytes'] / size:.2f} {unit};"
    " add a smaller batch to plan.per_device_batch, a larger B to"
    " plan.num_blocks or 'full' to plan.remat"
  )
  if measure == "held_all":
    least = min(r["offload_bytes"] for r in rows)
    verdict = "would fit in" if least <= capacity else "still needs"
    line += (
      f", or set blocks.offload=True (the smallest step alone {verdict}"
      f" {least / size:.2f} {unit})"
    )
  return line + "."


def table(result: dict) -> str:
  """The candidates, one row each, the skipped ones, then the
  recommendation and its command (or why nothing fits)."""
  unit, size = _unit(result["device_memory_bytes"])
  rows = result["candidates"]
  w = max([5] + [len(r["remat"]) for r in rows])
  fit_column = "offload" if result["fit_measure"] == "offload" else "all"
  lines = [
    f"plan for {result['device_memory']} per device ({result['backend']},"
    f" {result['num_compiled']} steps compiled); {unit} all: every block"
    f" held; {unit} offload: the step alone (blocks.offload); fits reads"
    f" {unit} {fit_column}",
    f"{'B':>3} {'layers':>12} {'batch':>6} {'remat':>{w}}"
    f" {unit + ' all':>9} {unit + ' offload':>11} {'GFLOP/ex':>10}"
    f" {'fits':>5}",
  ]
  for r in rows:
    layers = ",".join(str(n) for n in r["layers_per_block"])
    if len(layers) > 12:
      layers = f"{r['layers_per_block'][0]}x{len(r['layers_per_block'])}"
    head = (
      f"{r['num_blocks']:>3} {layers:>12} {r['per_device_batch']:>6}"
      f" {r['remat']:>{w}}"
    )
    if not r["compiled"]:
      fits = "yes" if r["fits"] else "no"
      lines.append(f"{head} {'-':>9} {'-':>11} {'-':>10} {fits:>5}")
      continue
    lines.append(
      f"{head} {r['held_all_bytes'] / size:>9.2f}"
      f" {r['offload_bytes'] / size:>11.2f}"
      f" {r['gflop_per_example']:>10.4g} {'yes' if r['fits'] else 'no':>5}"
    )
  if any(not r["compiled"] for r in rows):
    lines.append(
      "-: not compiled: a larger batch of its B and remat fits (yes), or a"
      " smaller one does not (no)"
    )
  for r in result["skipped"]:
    what = (
      f"B={r['num_blocks']}"
      if "num_blocks" in r
      else f"batch {r['per_device_batch']}"
    )
    lines.append(f"skipped {what}: {r['reason']}")
  lines.append(result["message"])
  if result["command"]:
    lines.append(result["command"])
  if "max_sequence" in result:
    report = result["max_sequence"]
    lines.append(sequence_table(report, report["attention"]))
  lines.append(f"wrote {result.get('path', 'plan.json')}")
  return "\n".join(lines)
