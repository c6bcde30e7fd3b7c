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
