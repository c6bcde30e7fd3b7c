"""The training-step benchmark measures what it says, on a smoke config.

Its figures (speed, memory) belong in docs/results.md; here only that each
step kind runs and reports consistent quantities.
"""

import dataclasses
import importlib.util
import math
import os

import pytest

from configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
  path = os.path.join(ROOT, "benchmarks", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def train_step():
  return load("train_step")


def test_block_step_against_end_to_end_step(train_step):
  config = quickstart.get_config("smoke")  # B=3 equal blocks.
  block = train_step.measure(config, "block", steps=2)
  e2e = train_step.measure(config, "e2e", steps=2)
  for result in (block, e2e):
    assert result["seconds_per_step"] > 0 and result["peak_rss_bytes"] > 0
    assert result["examples_per_second"] == pytest.approx(
      config.batch_size / result["seconds_per_step"]
    )
    assert result["tokens_per_second"] is None  # Images, not tokens.
    assert result["page_faults_per_step"] >= 0
    assert result["allocator"] in ("libc", "tcmalloc", "jemalloc", "unknown")
  # A block step runs one of the three blocks: fewer FLOPs and temporaries.
  assert block["flops"] < e2e["flops"]
  assert block["temp_bytes"] < e2e["temp_bytes"]


def test_profile_sums_the_step_time_by_op_kind(train_step, tmp_path):
  config = quickstart.get_config("smoke")
  result = train_step.measure(config, "block", steps=2, profile=str(tmp_path))
  ops = result["op_seconds"]
  assert ops and all(seconds > 0 for seconds in ops.values())
  assert list(ops.values()) == sorted(ops.values(), reverse=True)
  assert not any(name[-1].isdigit() for name in ops)  # Numbers stripped.
  assert not any(name.startswith("ThunkExecutor") for name in ops)
  assert "op_seconds" in train_step.measure(config, "e2e", steps=1)


def test_random_batch_follows_the_spec(train_step):
  import jax
  import jax.numpy as jnp
  import numpy as np

  spec = {
    "image": jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.float32),
    "label": jax.ShapeDtypeStruct((4,), jnp.int32),
  }
  batch = train_step.random_batch(spec, np.random.default_rng(0))
  assert batch["image"].shape == (4, 8, 8, 1)
  assert batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  assert set(np.unique(batch["label"])) <= {0, 1}


@pytest.fixture(scope="module")
def quality():
  return load("quality")


def test_quality_runner_tunes_seeds_and_tabulates_a_smoke_row(
  quality, tmp_path
):
  row = quality.ROWS["quickstart"]
  root = str(tmp_path / "runs")
  result = quality.run_row(row, root, [1, 2], [0.5, 2.0], smoke=True)
  for arm in quality.ARMS:
    arms = result["arms"][arm]
    # Each arm tuned on the validation split and kept its own best rate.
    assert len(arms["validation"]) == 2
    chosen = f"{arms['learning_rate']:.3g}"
    assert chosen in arms["validation"]
    best = max(arms["validation"].values())
    assert arms["validation"][chosen] == best
    assert set(arms["test"]) == {1, 2}
    assert all(0 <= v <= 1 for v in arms["test"].values())
    assert result[arm]["n"] == 2
    assert result[arm]["mean"] == pytest.approx(sum(arms["test"].values()) / 2)
  differences = [
    result["arms"]["dblocks"]["test"][s] - result["arms"]["e2e"]["test"][s]
    for s in (1, 2)
  ]
  assert result["difference"]["mean"] == pytest.approx(sum(differences) / 2)
  assert result["verdict"] in ("better", "level", "worse")
  assert 0 < result["temp_ratio"] < 1

  # The runs are workdirs: a second pass trains nothing and agrees.
  trained = []
  original = quality.train.train_and_evaluate
  quality.train.train_and_evaluate = lambda *a: (
    trained.append(a) or original(*a)
  )
  try:
    again = quality.run_row(row, root, [1, 2], [0.5, 2.0], smoke=True)
  finally:
    quality.train.train_and_evaluate = original
  assert not trained
  assert again["arms"] == result["arms"]

  markdown = quality.table({"quickstart_smoke": result})
  assert markdown.count("\n| quickstart_smoke |") == 1
  assert "accuracy (%), higher is better" in markdown
  assert "end to end" in markdown


def test_quality_runner_reads_a_validation_split_for_tuning(quality):
  for row in quality.ROWS.values():
    config = quality.load_config(row.config, smoke=True)
    tuned = quality.variant(
      config, learning_rate=1.0, seed=7, fields=row.validation
    )
    assert tuned.optimizer.learning_rate == 1.0 and tuned.seed == 7
    assert tuned.data.eval_split != config.data.eval_split
    assert config.optimizer.learning_rate != 1.0  # The original is kept.
    assert quality.families.end_to_end_config(config).method == "e2e"


def test_quality_runner_never_chooses_a_diverged_learning_rate(quality):
  nan = float("nan")
  assert quality.best_learning_rate({1e-3: 0.9, 3e-3: nan}, True) == 1e-3
  assert quality.best_learning_rate({1e-3: 3.1, 3e-3: 2.9}, False) == 3e-3
  with pytest.raises(RuntimeError, match="every tuning run diverged"):
    quality.best_learning_rate({1e-3: nan}, True)


def test_quality_runner_compares_generations_at_one_diversity(quality):
  # The anchor (the baseline's default decoding) when both curves reach it;
  # else the nearest share both reach; NaN when they share none.
  db = [(0.20, 30.0), (0.30, 60.0)]
  e2e = [(0.25, 15.0), (0.40, 40.0)]
  assert quality.shared_diversity({"a": db, "b": e2e}, 0.28) == 0.28
  assert quality.shared_diversity({"a": db, "b": e2e}, 0.35) == 0.30
  assert quality.shared_diversity({"a": db, "b": e2e}, 0.10) == 0.25
  far = [(0.5, 10.0), (0.6, 20.0)]
  assert math.isnan(quality.shared_diversity({"a": db, "b": far}, 0.55))

  # A seed whose generations share no diversity drops out of the intervals.
  row = quality.ROWS["ar"]
  arms = {
    "dblocks": {"test": {1: 30.0, 2: 32.0, 3: math.nan}},
    "e2e": {"test": {1: 20.0, 2: 21.0, 3: 25.0}},
  }
  result = quality.summarise(row, arms, None)
  assert result["dblocks"]["n"] == result["difference"]["n"] == 2
  assert result["difference"]["mean"] == pytest.approx(10.5)
  assert result["verdict"] == "worse"  # Lower is better; 10 and 11 apart.
  arms["dblocks"]["test"] = {1: math.nan}
  assert quality.summarise(row, arms, None)["verdict"] == "unknown"


@pytest.mark.slow
def test_quality_runner_sweeps_decoding_of_a_smoke_language_row(
  quality, tmp_path
):
  knobs = {
    "dblocks": ("sampler.temperature", (0.5, 2.0)),
    "e2e": ("sampler.top_p", (0.5, 0.95)),
  }
  decoding = dataclasses.replace(
    quality.ROWS["ar"].decoding, knobs=knobs, num_prompts=4, max_sequences=8
  )
  row = dataclasses.replace(quality.ROWS["ar"], decoding=decoding)
  root = str(tmp_path / "runs")
  result = quality.run_row(row, root, [1], [1.0], smoke=True)
  judge = os.path.join(root, "ar_smoke", "scorer", "eval.json")
  assert os.path.exists(judge)  # Trained once, for the row.
  for arm, (field, values) in knobs.items():
    arms = result["arms"][arm]
    curve = arms["curves"][1]
    assert [p["value"] for p in curve] == list(values)
    assert all(
      p["gen_ppl"] > 1 and 0 < p["distinct_bigrams"] <= 1 for p in curve
    )
    name = f"eval_{field.rsplit('.', 1)[-1]}{values[0]:g}.json"
    assert os.path.exists(os.path.join(arms["workdirs"][1], name))
    # The compared figure is the curve read at the shared diversity.
    target = arms["target_diversity"][1]
    points = [(p["distinct_bigrams"], p["gen_ppl"]) for p in curve]
    expected = (
      quality.diversity.perplexity_at_diversity(points, target)
      if math.isfinite(target)
      else math.nan
    )
    assert arms["test"][1] == pytest.approx(expected, nan_ok=True)
    assert 0 <= arms["accuracy"][1] <= 1  # Tuning's metric, kept.

  # A second pass trains and decodes nothing.
  calls = []
  original = quality.evaluation.evaluate_checkpoint
  quality.evaluation.evaluate_checkpoint = lambda *a, **k: calls.append(a)
  try:
    again = quality.run_row(row, root, [1], [1.0], smoke=True)
  finally:
    quality.evaluation.evaluate_checkpoint = original
  assert not calls
  assert again["arms"]["e2e"]["curves"] == result["arms"]["e2e"]["curves"]


def test_quality_runner_reads_flops_to_the_baselines_quality(quality):
  curve = [(10.0, 0.2), (20.0, 0.4), (30.0, 0.35), (40.0, 0.6)]
  assert quality.flops_to_reach(curve, 0.3) == pytest.approx(15.0)
  assert quality.flops_to_reach(curve, 0.4) == pytest.approx(20.0)
  assert quality.flops_to_reach(curve, 0.5) == pytest.approx(36.0)
  assert quality.flops_to_reach(curve, 0.1) == pytest.approx(5.0)  # From 0.
  assert math.isnan(quality.flops_to_reach(curve, 0.7))  # Never reached.

  row = quality.ROWS["recurrent"]
  never = {
    "arms": {"dblocks": {"test": {1: math.nan, 2: math.nan}}},
    "verdict": "unknown",
  }
  assert quality.censored_verdict(row, never)["verdict"] == (
    "worse: not reached within 2x the FLOPs"
  )
  some = {
    "arms": {"dblocks": {"test": {1: 0.5, 2: math.nan}}},
    "verdict": "unknown",
  }
  assert (
    "(1 of 2 seeds reached it)"
    in quality.censored_verdict(row, some)["verdict"]
  )


@pytest.mark.slow
def test_quality_runner_measures_flops_to_quality_on_a_smoke_row(
  quality, tmp_path
):
  row = quality.ROWS["recurrent"]
  root = str(tmp_path / "runs")
  result = quality.run_row(row, root, [1], [1.0], smoke=True)
  db, e2e = result["arms"]["dblocks"], result["arms"]["e2e"]
  curve = db["curves"][1]
  # Evaluated along the way, at rising FLOPs, up to the budget.
  assert len(curve) >= row.flops.evaluations
  flops = [f for f, _ in curve]
  assert flops == sorted(set(flops))
  baseline = quality._finished(e2e["workdirs"][1], None)
  budget = row.flops.budget * baseline["train_flops"]
  assert budget <= curve[-1][0] < budget + curve[0][0]
  expected = quality.flops_to_reach(curve, baseline["accuracy"])
  assert db["test"][1] == pytest.approx(
    expected / baseline["train_flops"], nan_ok=True
  )
  assert e2e["test"][1] == 1.0 and e2e["accuracy"][1] == baseline["accuracy"]


def test_the_documents_show_the_measured_quality_table(quality):
  # The README and docs/results.md print the table of results/quality.json:
  # every measured row, as `--table` prints it, and a line for each row
  # still to measure.
  results = quality.read_results(os.path.join(ROOT, "results", "quality.json"))
  assert results, "results/quality.json holds no row"
  measured = {name: results[name] for name in quality.ROWS if name in results}
  pending = [row for name, row in quality.ROWS.items() if name not in results]
  lines = quality.table(measured, pending).splitlines()[2:]
  for document in ("README.md", os.path.join("docs", "results.md")):
    with open(os.path.join(ROOT, document)) as f:
      text = f.read()
    for line in lines:
      assert line in text, f"{document} lacks the table line {line[:60]!r}"
