"""The training-step benchmark measures what it says, on a smoke config.

Its figures (speed, memory) belong in docs/results.md; here only that each
step kind runs and reports consistent quantities.
"""

import importlib.util
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
      config, learning_rate=1.0, seed=7, data=row.validation
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
