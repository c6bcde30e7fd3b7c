"""Quality of DiffusionBlocks against its end-to-end baseline, under one
protocol, as rows of one table (docs/results.md, "Quality: the protocol").

For each row, each arm (DiffusionBlocks and the baseline that
`families.end_to_end_config` derives, the same number of layer evaluations):

1. Tuning: the row's learning rate times each of `--learning_rate_factors`
   (default 1/3, 1, 3), trained with the first seed on a validation split
   (`Row.validation`: the last part of the training images, or the corpus's
   validation split) and scored there. Each arm keeps its own best.
2. Seeds: the chosen learning rate trained with every seed of `--seeds`
   (default 42, 43, 44) on the full training split, scored on the test
   split. A tuning run that diverges (a non-finite loss) scores NaN and is
   never chosen.
3. The result: each arm's mean with its 95% Student-t interval, the
   difference DiffusionBlocks minus baseline paired by seed with its own
   interval, the verdict (better / level / worse: the difference's interval
   excluding 0 or not), and the block / end-to-end ratio of the compiled
   training step's temporaries (`--mode=memory`'s figure, at the row's
   config).

The rows are defined in `quality_rows.py`. A row with a scorer (the DiT
row's classifier, whose features give the Frechet distance; the language
rows' judge) trains it once, with the first seed, under `ROW/scorer`.

The language rows that generate text (`ar`, `ar_paper_noise`) tune on
validation next-token accuracy and compare generations at matched
diversity, under the judge: each seed's runs are evaluated along their
arm's decoding knob (the baseline's top-p, DiffusionBlocks'
starting-noise temperature); the baseline at its default top-p sets the
seed's share of distinct bigrams, and each arm's generative perplexity is
read off its curve at that share (`evaluate.perplexity_at_diversity`).

The `recurrent` row compares compute instead: DiffusionBlocks trains for
a multiple of the baseline's training FLOPs, evaluated along the way, and
its metric is the FLOPs at which it first reaches the baseline's final
next-token accuracy, over the baseline's (censored when it never does).

The `parity` row instead trains the official PyTorch code
(`--official_script`, run with `--official_python`; kept outside this
project) and ours at the official settings, with every seed, untuned.

Every run is a workdir under `--runs_dir/ROW/ARM/...` (resumed if stopped,
skipped once its eval.json holds the final step), so re-running the command
continues where it stopped. Results go to `--results` (merged by row) and
the table is printed as markdown.

  python benchmarks/quality.py --row=quickstart
  python benchmarks/quality.py --row=mdm --row=vit
  python benchmarks/quality.py --row=ar --row=ar_paper_noise
  python benchmarks/quality.py --row=parity \\
    --official_python=../official-venv/bin/python \\
    --official_script=PATH/TO/official/vit_fashion_mnist.py
  python benchmarks/quality.py --table        # the table of what is done
  python benchmarks/quality.py --row=quickstart --smoke   # seconds, `:smoke`
"""

import importlib
import json
import math
import os
import subprocess
import sys
import time

# The config files import `configs.common` from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags, logging  # noqa: E402

from dblocks_jax import errors, families  # noqa: E402
from dblocks_jax.cli import evaluation, memory  # noqa: E402
from dblocks_jax.evaluate import diversity, intervals  # noqa: E402
from dblocks_jax.families import flops, train  # noqa: E402

# The rows live beside this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality_rows import ROWS, Row  # noqa: E402

ARMS = ("dblocks", "e2e")
# Written into a tuning run's workdir that stopped on a non-finite loss.
DIVERGED = "diverged.txt"

row_flag = flags.DEFINE_multi_enum(
  "row", [], list(ROWS), "Rows to run (repeat the flag for several)."
)
runs_dir_flag = flags.DEFINE_string(
  "runs_dir", os.path.join("runs", "quality"), "Where the runs' workdirs go."
)
results_flag = flags.DEFINE_string(
  "results",
  os.path.join("results", "quality.json"),
  "The results file (rows merged in).",
)
seeds_flag = flags.DEFINE_list("seeds", ["42", "43", "44"], "Seeds per arm.")
factors_flag = flags.DEFINE_list(
  "learning_rate_factors",
  ["0.3333", "1", "3"],
  "Tuning: the row's learning rate times each factor.",
)
smoke_flag = flags.DEFINE_bool(
  "smoke", False, "Each row's `:smoke` config (seconds; checks the runner)."
)
table_flag = flags.DEFINE_bool(
  "table", False, "Print the table of --results and run nothing."
)
official_python_flag = flags.DEFINE_string(
  "official_python", None, "parity: the Python of the official code's venv."
)
official_script_flag = flags.DEFINE_string(
  "official_script",
  None,
  "parity: the script that trains the official ViT on Fashion-MNIST.",
)


# ----- Configs ----------------------------------------------------------------


def load_config(spec: str, smoke: bool = False):
  """`configs/NAME.py[:ARGS]` (with `smoke` added) -> its config."""
  path, _, arg = spec.partition(":")
  module = importlib.import_module(
    "configs." + os.path.splitext(os.path.basename(path))[0]
  )
  args = [a for a in arg.split(",") if a] + (["smoke"] if smoke else [])
  return module.get_config(",".join(args) or None)


def row_config(row: Row, smoke: bool):
  """The row's block-wise config with the row's fields."""
  return variant(load_config(row.config, smoke), fields=row.fields)


def arm_config(row: Row, arm: str, smoke: bool, scorer: str | None = None):
  """One arm's config: the row's (or its baseline), with the row's fields,
  the scorer's workdir where its evaluations use one, and DiffusionBlocks'
  FLOPs budget where the row compares FLOPs."""
  config = row_config(row, smoke)
  if arm != "dblocks":
    config = families.end_to_end_config(config)
  fields = {}
  if scorer and row.scorer.in_training:
    fields[row.scorer.field] = os.path.abspath(scorer)
  if row.flops and arm == "dblocks":
    steps = budget_steps(row, smoke)
    fields["total_steps"] = steps
    fields["eval_every_steps"] = max(1, steps // row.flops.evaluations)
  return variant(config, fields=fields)


def variant(config, *, learning_rate=None, seed=None, fields=None):
  """A copy of `config` with another learning rate, seed or any fields
  named by dotted paths (`fields={"sampler.top_p": 0.8}`)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if learning_rate is not None:
      config.optimizer.learning_rate = learning_rate
    if seed is not None:
      config.seed = seed
    for path, value in (fields or {}).items():
      *parents, name = path.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[name] = value
  return config


# ----- Runs ------------------------------------------------------------------


class Runs:
  """Trains (or resumes, or skips) runs, with progress across the row."""

  def __init__(self, total: int):
    self.total = total
    self.done = 0
    self.trained_seconds = 0.0
    self.trained = 0

  def train(
    self, config, workdir: str, metric: str, may_diverge: bool = False
  ) -> float:
    """The metric of the finished run in `workdir`, training it first
    unless its eval.json holds the final step.

    With `may_diverge` (a tuning run), a run stopped by a non-finite loss
    scores NaN (never chosen) and is remembered as diverged; otherwise the
    error stops the row.
    """
    self.done += 1
    finished = _finished(workdir, config.total_steps)
    if finished is None and os.path.exists(os.path.join(workdir, DIVERGED)):
      return math.nan
    if finished is None:
      logging.info(
        "run %d/%d: %s (lr %.3g, seed %d)%s",
        self.done,
        self.total,
        workdir,
        config.optimizer.learning_rate,
        config.seed,
        self._eta(),
      )
      start = time.monotonic()
      try:
        finished = train.train_and_evaluate(config, workdir)
      except errors.NonFiniteLossError as e:
        if not may_diverge:
          raise
        logging.warning("%s diverged: %s", workdir, e)
        with open(os.path.join(workdir, DIVERGED), "w") as f:
          f.write(f"{e}\n")
        return math.nan
      finally:
        self.trained_seconds += time.monotonic() - start
        self.trained += 1
    return float(finished[metric])

  def _eta(self) -> str:
    if not self.trained:
      return ""
    left = (self.total - self.done + 1) * self.trained_seconds / self.trained
    return f", about {left / 60:.0f} min left"


def _finished(workdir: str, total_steps: int | None) -> dict | None:
  """The run's eval.json if it holds step `total_steps` (any step with
  None), else None."""
  path = os.path.join(workdir, "eval.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    result = json.load(f)
  done = total_steps is None or result.get("step") == total_steps
  return result if done else None


def run_name(learning_rate: float, seed: int) -> str:
  return f"lr{learning_rate:.3g}_seed{seed}"


def best_learning_rate(tuning: dict, higher_is_better: bool) -> float:
  """The learning rate of the best finite validation score.

  Raises:
    RuntimeError: every tuning run diverged.
  """
  finite = {lr: v for lr, v in tuning.items() if math.isfinite(v)}
  if not finite:
    raise RuntimeError(
      f"every tuning run diverged ({sorted(tuning)}): lower the row's"
      " learning rate or its factors"
    )
  pick = max if higher_is_better else min
  return pick(finite, key=finite.get)


def train_scorer(row: Row, root: str, seeds, smoke: bool) -> str | None:
  """The workdir of the row's scorer, trained first if need be (None
  without one)."""
  if row.scorer is None:
    return None
  folder = os.path.join(root, "scorer")
  config = variant(
    load_config(row.scorer.config, smoke),
    seed=seeds[0],
    fields=row.scorer.fields,
  )
  Runs(total=1).train(config, folder, "accuracy")
  return folder


def tune_and_seed(
  row: Row, root: str, seeds, factors, smoke: bool, scorer: str | None = None
) -> dict:
  """Steps 1-2 of the protocol for both arms; returns each arm's tuning
  scores, chosen learning rate and test metric per seed."""
  runs = Runs(total=len(ARMS) * (len(factors) + len(seeds)))
  metric = row.tune_metric or row.metric
  arms = {}
  for arm in ARMS:
    config = arm_config(row, arm, smoke, scorer)
    base = config.optimizer.learning_rate
    tuning = {}
    for factor in factors:
      lr = base * factor
      tuned = variant(
        config, learning_rate=lr, seed=seeds[0], fields=row.validation
      )
      folder = os.path.join(root, arm, "tune", run_name(lr, seeds[0]))
      tuning[lr] = runs.train(tuned, folder, metric, may_diverge=True)
    chosen = best_learning_rate(tuning, row.higher_is_better)
    per_seed, workdirs = {}, {}
    for seed in seeds:
      run = variant(config, learning_rate=chosen, seed=seed)
      workdirs[seed] = os.path.join(root, arm, run_name(chosen, seed))
      per_seed[seed] = runs.train(run, workdirs[seed], metric)
    arms[arm] = {
      "validation": {f"{lr:.3g}": v for lr, v in tuning.items()},
      "learning_rate": chosen,
      "test": per_seed,
      "workdirs": workdirs,
    }
  return arms


# ----- Generated text at matched diversity ------------------------------------


def decode(config, workdir: str, field: str, value: float, judge: dict, d):
  """The run in `workdir` evaluated with `field` = `value` and the judge
  (`judge`: its config field and workdir; the result kept as
  `eval_<field><value>.json`, reused once written)."""
  name = f"eval_{field.rsplit('.', 1)[-1]}{value:g}.json"
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    logging.info("decoding %s with %s=%g", workdir, field, value)
    evaluation.evaluate_checkpoint(
      variant(
        config,
        fields={
          field: value,
          **judge,
          "eval.num_prompts": d.num_prompts,
          "eval.max_sequences": d.max_sequences,
        },
      ),
      workdir,
      output=name,
    )
  with open(path) as f:
    result = json.load(f)
  return {
    "value": value,
    **{k: result[k] for k in ("distinct_bigrams", "gen_ppl", "accuracy")},
  }


def shared_diversity(curves: dict, anchor: float) -> float:
  """The share of distinct bigrams to compare the arms at: `anchor` (the
  baseline's default decoding), moved to the nearest share every arm's
  curve reaches when one does not; NaN when the curves share none."""
  low = max(min(d for d, _ in curve) for curve in curves.values())
  high = min(max(d for d, _ in curve) for curve in curves.values())
  return min(max(anchor, low), high) if low <= high else math.nan


def matched_diversity(
  row: Row, arms: dict, seeds, smoke: bool, scorer: str
) -> dict:
  """Replaces each arm's per-seed metric (kept as "accuracy") by its
  generative perplexity at the diversity of the baseline's `anchor`
  decoding of the same seed, under the row's judge (`scorer`, its
  workdir); the curves go into `arms` too."""
  d = row.decoding
  judge = {row.scorer.field: os.path.abspath(scorer)}
  for arm in ARMS:
    config = arm_config(row, arm, smoke, scorer)
    field, values = d.knobs[arm]
    chosen = arms[arm]["learning_rate"]
    arms[arm]["accuracy"] = dict(arms[arm]["test"])
    arms[arm]["curves"] = {
      seed: [
        decode(
          variant(config, learning_rate=chosen, seed=seed),
          arms[arm]["workdirs"][seed],
          field,
          value,
          judge,
          d,
        )
        for value in values
      ]
      for seed in seeds
    }
  for seed in seeds:
    anchor = next(
      p for p in arms["e2e"]["curves"][seed] if p["value"] == d.anchor
    )
    curves = {
      arm: [
        (p["distinct_bigrams"], p["gen_ppl"]) for p in arms[arm]["curves"][seed]
      ]
      for arm in ARMS
    }
    target = shared_diversity(curves, anchor["distinct_bigrams"])
    if math.isnan(target):
      logging.warning(
        "seed %d: the arms' curves share no diversity (%s); widen"
        " Decoding.knobs",
        seed,
        curves,
      )
    for arm in ARMS:
      arms[arm]["test"][seed] = (
        diversity.perplexity_at_diversity(curves[arm], target)
        if math.isfinite(target)
        else math.nan
      )
      arms[arm].setdefault("target_diversity", {})[seed] = target
  return arms


def official_accuracy(seed: int, workdir: str, epochs: int) -> float:
  """The official code's final test accuracy with `seed` (its JSON lines
  kept in `workdir/official.jsonl`; a finished file is reused)."""
  path = os.path.join(workdir, "official.jsonl")
  if not os.path.exists(path):
    if not (official_python_flag.value and official_script_flag.value):
      raise app.UsageError(
        "the parity row runs the official code: pass --official_python and"
        " --official_script (see the official code's README for its venv)"
      )
    os.makedirs(workdir, exist_ok=True)
    command = [
      official_python_flag.value,
      official_script_flag.value,
      "--mode=dblock",
      f"--epochs={epochs}",
      f"--eval-every={epochs}",
      f"--seed={seed}",
    ]
    logging.info("official code: %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      raise RuntimeError(f"the official code failed:\n{done.stderr[-3000:]}")
    with open(path + ".tmp", "w") as f:
      f.write(done.stdout)
    os.replace(path + ".tmp", path)
  with open(path) as f:
    lines = [json.loads(x) for x in f if x.startswith("{")]
  return float(lines[-1]["accuracy"])


def parity(row: Row, root: str, seeds, smoke: bool) -> dict:
  """Ours and the official code at the official settings, every seed."""
  config = load_config(row.config, smoke)
  epochs = round(
    config.total_steps / config.steps_per_epoch / config.blocks.num_blocks
  )
  runs = Runs(total=len(seeds))
  ours = {}
  official = {}
  for seed in seeds:
    folder = os.path.join(root, "ours", f"seed{seed}")
    ours[seed] = runs.train(variant(config, seed=seed), folder, row.metric)
    official[seed] = official_accuracy(
      seed, os.path.join(root, "official", f"seed{seed}"), epochs
    )
  lr = config.optimizer.learning_rate
  return {
    "dblocks": {"learning_rate": lr, "test": ours},
    "e2e": {"learning_rate": lr, "test": official, "code": "official"},
  }


# ----- Training FLOPs to the baseline's quality -------------------------------

_BUDGET_STEPS = {}


def budget_steps(row: Row, smoke: bool) -> int:
  """DiffusionBlocks' steps for `row.flops.budget` x the baseline's
  training FLOPs (XLA's counts; compiled once per row and process)."""
  key = (row.name, smoke)
  if key not in _BUDGET_STEPS:
    config = row_config(row, smoke)
    per_step = flops.training_flops(config)["step_flops"]
    baseline = flops.training_flops(families.end_to_end_config(config))
    _BUDGET_STEPS[key] = math.ceil(
      row.flops.budget * baseline["train_flops"] / per_step
    )
  return _BUDGET_STEPS[key]


def quality_curve(workdir: str, metric: str) -> list:
  """(training FLOPs, `metric`) of every evaluation of the run in
  `workdir`, in order: those during training (`eval/...` in metrics.jsonl;
  a resumed run's repeats counted once) and the final one."""
  points = {}
  flops_key, metric_key = "eval/train_flops", f"eval/{metric}"
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      entry = json.loads(line)
      if flops_key in entry and metric_key in entry:
        points[entry["step"]] = (entry[flops_key], entry[metric_key])
  final = _finished(workdir, None)
  points[final["step"]] = (final["train_flops"], final[metric])
  return [points[step] for step in sorted(points)]


def flops_to_reach(curve: list, target: float) -> float:
  """The training FLOPs at which `curve` (increasing FLOPs, a quality
  where higher is better) first reaches `target`, linearly between
  evaluations from (0 FLOPs, 0); NaN when it never does."""
  before = (0.0, 0.0)
  for point in curve:
    if point[1] >= target:
      (f0, q0), (f1, q1) = before, point
      return f0 + (f1 - f0) * (target - q0) / (q1 - q0) if q1 > q0 else f1
    before = point
  return math.nan


def flops_to_quality(row: Row, arms: dict, seeds) -> dict:
  """Replaces each arm's per-seed metric (kept as "accuracy") by the
  training FLOPs to the baseline's final accuracy over the baseline's:
  1 for the baseline; DiffusionBlocks' read off its quality curve (NaN,
  censored, when it never gets there within its budget)."""
  for arm in ARMS:
    arms[arm]["accuracy"] = dict(arms[arm]["test"])
  arms["dblocks"]["curves"] = {}
  for seed in seeds:
    baseline = _finished(arms["e2e"]["workdirs"][seed], None)
    curve = quality_curve(arms["dblocks"]["workdirs"][seed], "accuracy")
    reached = flops_to_reach(curve, baseline["accuracy"])
    arms["dblocks"]["curves"][seed] = curve
    arms["dblocks"]["test"][seed] = reached / baseline["train_flops"]
    arms["e2e"]["test"][seed] = 1.0
  return arms


def censored_verdict(row: Row, result: dict) -> dict:
  """The FLOPs row's verdict, saying how many seeds reached the baseline's
  quality within DiffusionBlocks' budget."""
  ratios = result["arms"]["dblocks"]["test"].values()
  reached = sum(math.isfinite(r) for r in ratios)
  if reached == 0:
    result["verdict"] = (
      f"worse: not reached within {row.flops.budget:g}x the FLOPs"
    )
  elif reached < len(ratios):
    result["verdict"] += f" ({reached} of {len(ratios)} seeds reached it)"
  return result


# ----- The result -------------------------------------------------------------


def summarise(row: Row, arms: dict, temp_ratio: float | None) -> dict:
  """Step 3: intervals, the paired difference, the verdict, over the seeds
  where both arms have a result (a language row's seed drops out when its
  generations share no diversity; with none left, "unknown")."""
  db, e2e = arms["dblocks"]["test"], arms["e2e"]["test"]
  seeds = [
    s
    for s in db
    if math.isfinite(db[s]) and math.isfinite(e2e.get(s, math.nan))
  ]
  if seeds:
    db_mean = intervals.mean_interval([db[s] for s in seeds])
    e2e_mean = intervals.mean_interval([e2e[s] for s in seeds])
    difference = intervals.paired_difference(
      {s: db[s] for s in seeds}, {s: e2e[s] for s in seeds}
    )
    verdict = intervals.verdict(difference, row.higher_is_better)
  else:
    db_mean = e2e_mean = difference = intervals.Interval(math.nan, math.nan, 0)
    verdict = "unknown"
  return {
    "row": row.name,
    "config": row.config,
    "metric": row.label or row.metric,
    "higher_is_better": row.higher_is_better,
    "scale": row.scale,
    "arms": arms,
    "dblocks": db_mean.as_dict(),
    "e2e": e2e_mean.as_dict(),
    "difference": difference.as_dict(),
    "verdict": verdict,
    "temp_ratio": temp_ratio,
    "paper": row.paper,
    "departures": row.departures,
    "baseline": "official PyTorch code" if row.official else "end to end",
  }


def memory_ratio(row: Row, smoke: bool) -> float:
  """Block / end-to-end temporaries of the compiled training step."""
  temps = [
    memory.compiled_step_memory(arm_config(row, arm, smoke))["temp_bytes"]
    for arm in ARMS
  ]
  return temps[0] / temps[1]


def run_row(row: Row, root: str, seeds, factors, smoke: bool) -> dict:
  folder = os.path.join(root, row.name + ("_smoke" if smoke else ""))
  if row.official:
    return summarise(row, parity(row, folder, seeds, smoke), None)
  scorer = train_scorer(row, folder, seeds, smoke)
  arms = tune_and_seed(row, folder, seeds, factors, smoke, scorer)
  if row.decoding:
    arms = matched_diversity(row, arms, seeds, smoke, scorer)
  if row.flops:
    arms = flops_to_quality(row, arms, seeds)
    return censored_verdict(row, summarise(row, arms, memory_ratio(row, smoke)))
  return summarise(row, arms, memory_ratio(row, smoke))


def _interval(entry: dict, scale: float) -> str:
  mean, half = entry["mean"] * scale, entry["half_width"] * scale
  if math.isnan(half):
    return f"{mean:.2f}"
  return f"{mean:.2f} ± {half:.2f}"


def table(results: dict, pending=()) -> str:
  """The markdown table of `results` ({row: summarise(...)}), then a line
  per row of `pending` (Rows not measured yet) with its command."""
  lines = [
    "| row | metric | DiffusionBlocks | baseline | difference | verdict"
    " | memory | paper | config | departures | hours |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for name, r in results.items():
    scale = r["scale"]
    direction = "higher" if r["higher_is_better"] else "lower"
    unit = " (%)" if scale == 100 else ""
    ratio = f"{r['temp_ratio']:.2f}" if r["temp_ratio"] else "-"
    hours = f"{r['minutes'] / 60:.1f}" if r.get("minutes") else "-"
    lines.append(
      f"| {name} | {r['metric']}{unit}, {direction} is better"
      f" | {_interval(r['dblocks'], scale)}"
      f" | {_interval(r['e2e'], scale)} ({r['baseline']})"
      f" | {_interval(r['difference'], scale)} | {r['verdict']} | {ratio}"
      f" | {r['paper'] or '-'} | `{r['config']}` | {r['departures']}"
      f" | {hours} |"
    )
  for row in pending:
    metric = row.label or row.metric
    lines.append(
      f"| {row.name} | {metric} | - | - | - | not measured yet:"
      f" `python benchmarks/quality.py --row={row.name}` | - |"
      f" {row.paper or '-'} | `{row.config}` | {row.departures} | - |"
    )
  lines.append(
    f"\n± : 95% Student-t interval over seeds (n = {_seed_counts(results)});"
    " difference = DiffusionBlocks - baseline, paired by seed; memory ="
    " block / end-to-end step temporaries (XLA); hours = the row's wall time"
    " on the machine that ran it."
  )
  return "\n".join(lines)


def _seed_counts(results: dict) -> str:
  counts = sorted({r["dblocks"]["n"] for r in results.values()})
  return ", ".join(map(str, counts)) or "-"


def read_results(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def write_results(path: str, results: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)


def main(argv):
  del argv
  results = read_results(results_flag.value)
  if not table_flag.value:
    if not row_flag.value:
      raise app.UsageError(f"name a --row ({', '.join(ROWS)}) or --table")
    seeds = [int(s) for s in seeds_flag.value]
    factors = [float(f) for f in factors_flag.value]
    for name in row_flag.value:
      key = name + ("_smoke" if smoke_flag.value else "")
      start = time.monotonic()
      row = run_row(
        ROWS[name], runs_dir_flag.value, seeds, factors, smoke_flag.value
      )
      # Wall time summed over the commands that trained the row's runs.
      before = read_results(results_flag.value).get(key, {})
      row["minutes"] = (
        before.get("minutes", 0) + (time.monotonic() - start) / 60
      )
      # Read again: another row may have finished meanwhile.
      results = {**read_results(results_flag.value), key: row}
      write_results(results_flag.value, results)
  ordered = {name: results[name] for name in ROWS if name in results}
  pending = [row for name, row in ROWS.items() if name not in results]
  others = {k: v for k, v in results.items() if k not in ordered}
  print(table({**ordered, **others}, pending))


if __name__ == "__main__":
  app.run(main)
