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

The `parity` row instead trains the official PyTorch code
(`--official_script`, run with `--official_python`; kept outside this
project) and ours at the official settings, with every seed, untuned.

Every run is a workdir under `--runs_dir/ROW/ARM/...` (resumed if stopped,
skipped once its eval.json holds the final step), so re-running the command
continues where it stopped. Results go to `--results` (merged by row) and
the table is printed as markdown.

  python benchmarks/quality.py --row=quickstart
  python benchmarks/quality.py --row=mdm --row=vit
  python benchmarks/quality.py --row=parity \\
    --official_python=../official-venv/bin/python \\
    --official_script=PATH/TO/official/vit_fashion_mnist.py
  python benchmarks/quality.py --table        # the table of what is done
  python benchmarks/quality.py --row=quickstart --smoke   # seconds, `:smoke`
"""

import dataclasses
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
from dblocks_jax.cli import memory  # noqa: E402
from dblocks_jax.evaluate import intervals  # noqa: E402
from dblocks_jax.families import train  # noqa: E402

ARMS = ("dblocks", "e2e")
# Written into a tuning run's workdir that stopped on a non-finite loss.
DIVERGED = "diverged.txt"
# The last tenth of the training images held out for tuning (Fashion-MNIST:
# 54,000 / 6,000; the digits' 1,472 training images: 1,325 / 147).
IMAGE_VALIDATION = {"train_split": "train[:90%]", "eval_split": "train[90%:]"}
TEXT_VALIDATION = {"eval_split": "validation"}


@dataclasses.dataclass(frozen=True)
class Row:
  """One comparison of the table.

  Attributes:
    name: the row's name (`--row`).
    config: the block-wise config, `configs/NAME.py[:ARGS]`.
    metric: the eval.json field compared.
    higher_is_better: the metric's direction.
    validation: `data` fields that train and score on a validation split.
    scale: the metric's factor in the table (100: a fraction as %).
    paper: the paper's figures for the same comparison, or "".
    departures: what the row's settings change from the paper's.
    official: the parity row: DiffusionBlocks against the official code.
  """

  name: str
  config: str
  metric: str
  higher_is_better: bool
  validation: dict
  scale: float = 1.0
  paper: str = ""
  departures: str = ""
  official: bool = False


ROWS = {
  row.name: row
  for row in (
    Row(
      "parity",
      "configs/vit_fashion_mnist.py:epochs=6",
      "accuracy",
      True,
      IMAGE_VALIDATION,
      scale=100,
      paper="official code: 68.1% (one seed)",
      departures="none (the official settings)",
      official=True,
    ),
    Row(
      "quickstart",
      "configs/quickstart.py",
      "accuracy",
      True,
      IMAGE_VALIDATION,
      scale=100,
      departures="CLS readout, explicit partition, layers (2,1,1),"
      " log-uniform sigma, hard hand-off",
    ),
    Row(
      "vit",
      "configs/vit_fashion_mnist.py:epochs=3",
      "accuracy",
      True,
      IMAGE_VALIDATION,
      scale=100,
      paper="CIFAR-100: DB 49.1% vs e2e 47.5% (ViT, Table 1)",
      departures="none (the official settings); 3 epochs",
    ),
    Row(
      "vit_tuned",
      "configs/vit_fashion_mnist.py:epochs=3,tuned",
      "accuracy",
      True,
      IMAGE_VALIDATION,
      scale=100,
      departures="CLS readout, layers (4,1,1), log-uniform sigma, hard"
      " hand-off; 3 epochs",
    ),
    Row(
      "mdm",
      "configs/mdm_pydocs.py",
      "bpc",
      False,
      TEXT_VALIDATION,
      paper="text8: DB 1.45 vs e2e 1.56 BPC (Table 3)",
      departures="6 layers of width 128, 64-character sequences, 2,500"
      " baseline steps",
    ),
  )
}

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


def arm_config(row: Row, arm: str, smoke: bool):
  config = load_config(row.config, smoke)
  return config if arm == "dblocks" else families.end_to_end_config(config)


def variant(config, *, learning_rate=None, seed=None, data=None):
  """A copy of `config` with another learning rate, seed or data fields."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if learning_rate is not None:
      config.optimizer.learning_rate = learning_rate
    if seed is not None:
      config.seed = seed
    for field, value in (data or {}).items():
      config.data[field] = value
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


def _finished(workdir: str, total_steps: int) -> dict | None:
  path = os.path.join(workdir, "eval.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    result = json.load(f)
  return result if result.get("step") == total_steps else None


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


def tune_and_seed(row: Row, root: str, seeds, factors, smoke: bool) -> dict:
  """Steps 1-2 of the protocol for both arms; returns each arm's tuning
  scores, chosen learning rate and test metric per seed."""
  runs = Runs(total=len(ARMS) * (len(factors) + len(seeds)))
  arms = {}
  for arm in ARMS:
    config = arm_config(row, arm, smoke)
    base = config.optimizer.learning_rate
    tuning = {}
    for factor in factors:
      lr = base * factor
      tuned = variant(
        config, learning_rate=lr, seed=seeds[0], data=row.validation
      )
      folder = os.path.join(root, arm, "tune", run_name(lr, seeds[0]))
      tuning[lr] = runs.train(tuned, folder, row.metric, may_diverge=True)
    chosen = best_learning_rate(tuning, row.higher_is_better)
    per_seed = {}
    for seed in seeds:
      run = variant(config, learning_rate=chosen, seed=seed)
      folder = os.path.join(root, arm, run_name(chosen, seed))
      per_seed[seed] = runs.train(run, folder, row.metric)
    arms[arm] = {
      "validation": {f"{lr:.3g}": v for lr, v in tuning.items()},
      "learning_rate": chosen,
      "test": per_seed,
    }
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


# ----- The result -------------------------------------------------------------


def summarise(row: Row, arms: dict, temp_ratio: float | None) -> dict:
  """Step 3: intervals, the paired difference, the verdict."""
  db, e2e = arms["dblocks"]["test"], arms["e2e"]["test"]
  difference = intervals.paired_difference(db, e2e)
  return {
    "row": row.name,
    "config": row.config,
    "metric": row.metric,
    "higher_is_better": row.higher_is_better,
    "scale": row.scale,
    "arms": arms,
    "dblocks": intervals.mean_interval(list(db.values())).as_dict(),
    "e2e": intervals.mean_interval(list(e2e.values())).as_dict(),
    "difference": difference.as_dict(),
    "verdict": intervals.verdict(difference, row.higher_is_better),
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
  arms = tune_and_seed(row, folder, seeds, factors, smoke)
  return summarise(row, arms, memory_ratio(row, smoke))


def _interval(entry: dict, scale: float) -> str:
  mean, half = entry["mean"] * scale, entry["half_width"] * scale
  if math.isnan(half):
    return f"{mean:.2f}"
  return f"{mean:.2f} ± {half:.2f}"


def table(results: dict) -> str:
  """The markdown table of `results` ({row: summarise(...)})."""
  lines = [
    "| row | metric | DiffusionBlocks | baseline | difference | verdict"
    " | memory | paper | config | departures |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for name, r in results.items():
    scale = r["scale"]
    direction = "higher" if r["higher_is_better"] else "lower"
    unit = " (%)" if scale == 100 else ""
    ratio = f"{r['temp_ratio']:.2f}" if r["temp_ratio"] else "-"
    lines.append(
      f"| {name} | {r['metric']}{unit}, {direction} is better"
      f" | {_interval(r['dblocks'], scale)}"
      f" | {_interval(r['e2e'], scale)} ({r['baseline']})"
      f" | {_interval(r['difference'], scale)} | {r['verdict']} | {ratio}"
      f" | {r['paper'] or '-'} | `{r['config']}` | {r['departures']} |"
    )
  lines.append(
    f"\n± : 95% Student-t interval over seeds (n = {_seed_counts(results)});"
    " difference = DiffusionBlocks - baseline, paired by seed; memory ="
    " block / end-to-end step temporaries (XLA)."
  )
  return "\n".join(lines)


def _seed_counts(results: dict) -> str:
  counts = sorted({r["dblocks"]["n"] for r in results.values()})
  return ", ".join(map(str, counts))


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
      results[key] = run_row(
        ROWS[name], runs_dir_flag.value, seeds, factors, smoke_flag.value
      )
      write_results(results_flag.value, results)
  print(table(results))


if __name__ == "__main__":
  app.run(main)
