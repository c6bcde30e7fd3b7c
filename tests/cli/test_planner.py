"""`--mode=plan`: candidates of B, per-device batch and remat policy,
compiled for one device on abstract inputs, and the recommendation."""

import copy
import json

import pytest

from configs import dit_cifar10, mdm_text8, quickstart
from dblocks_jax.cli import memory, planner
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import flops


def _smoke(**plan):
  """The quickstart smoke ViT (3 layers) with a few candidates."""
  config = quickstart.get_config("smoke,official")
  config.plan.num_blocks = (1, 2)
  config.plan.per_device_batch = (16, 8)
  config.plan.remat = ("none", "full")
  config.plan.devices = 1  # The command's batch_size: 1 x the batch.
  for field, value in plan.items():
    config.plan[field] = value
  return config


def _check_recommendation(result):
  """The recommendation fits, has the fewest FLOPs per example (within the
  tolerance) and, of those, the largest batch."""
  best = result["recommendation"]
  capacity = result["device_memory_bytes"]
  assert best["compiled"] and best["fits"]
  assert best["held_all_bytes"] <= capacity  # blocks.offload is False.
  fitting = [r for r in result["candidates"] if r["compiled"] and r["fits"]]
  assert all(r["held_all_bytes"] <= capacity for r in fitting)
  limit = min(r["gflop_per_example"] for r in fitting)
  limit *= 1 + result["flops_tolerance"]
  tied = [r for r in fitting if r["gflop_per_example"] <= limit]
  assert best in tied
  assert best["per_device_batch"] == max(r["per_device_batch"] for r in tied)
  return best


def test_plan_has_every_candidate_and_recommends_one_that_fits(tmp_path):
  config = _smoke(device_memory="1GiB", per_device_batch=(16,))
  argv = ["--config=configs/quickstart.py:smoke,official", "--mode=plan"]
  result = planner.plan(config, str(tmp_path), argv)
  rows = result["candidates"]
  keys = {(r["num_blocks"], r["remat"]) for r in rows}
  assert keys == {(b, p) for b in (1, 2) for p in ("none", "full")}
  assert all(r["compiled"] and r["fits"] for r in rows)  # 1 GiB is plenty.
  by = {(r["num_blocks"], r["remat"]): r for r in rows}
  assert by[1, "none"]["layers_per_block"] == [3]
  assert by[2, "none"]["layers_per_block"] == [2, 1]  # The most even split.
  # One block: nothing else to hold. Two: the other block's state too.
  assert by[1, "none"]["held_all_bytes"] == by[1, "none"]["offload_bytes"]
  assert by[2, "none"]["held_all_bytes"] > by[2, "none"]["offload_bytes"]
  # Remat recomputes the forward pass: more FLOPs per example.
  for b in (1, 2):
    full, none = by[b, "full"], by[b, "none"]
    assert full["gflop_per_example"] > none["gflop_per_example"]
  best = _check_recommendation(result)
  # The least recomputation: no remat, and one block (the parts outside
  # the layers run once per example, not once per block).
  assert (best["num_blocks"], best["remat"]) == (1, "none")
  assert result["command"] == (
    "python -m dblocks_jax.main"
    " --config=configs/quickstart.py:smoke,official"
    " --config.blocks.num_blocks=1 --config.batch_size=16"
    f" --config.model.remat=none --workdir={tmp_path}/train"
  )
  written = json.loads((tmp_path / "plan.json").read_text())
  assert written["recommendation"] == best
  assert written["fit_measure"] == "held_all"  # blocks.offload is False.
  text = planner.table(result)
  assert len(text.splitlines()) == len(rows) + 5 and result["command"] in text


def _fake_cost(calls):
  """A cost model in place of compiling: bytes grow with the batch and the
  largest block's layers (halved by full remat), each other block holds
  200 bytes; FLOPs grow with remat and B."""

  def cost(config):
    b, policy = config.blocks.num_blocks, config.model.remat
    calls.append((b, config.batch_size, policy))
    layers = planner.most_even(3, b)[0]
    factor = 0.5 if policy == "full" else 1.0
    step = 1000 + 100 * config.batch_size * layers * factor
    return {
      "held_all_bytes": int(step + 200 * (b - 1)),
      "offload_bytes": int(step),
      "flops_per_example": 3e9 * (2 - factor)
      + 1e8 * b
      + 1e9 / config.batch_size,
    }

  return cost


def test_search_compiles_few_batches_and_recommends_the_cheapest_fit(
  tmp_path, monkeypatch
):
  calls = []
  monkeypatch.setattr(planner, "candidate_cost", _fake_cost(calls))
  config = _smoke(
    device_memory="3400B", num_blocks=(1, 3), per_device_batch=(16, 8, 4, 2)
  )
  result = planner.plan(config, str(tmp_path))
  rows = {
    (r["num_blocks"], r["remat"], r["per_device_batch"]): r
    for r in result["candidates"]
  }
  assert len(rows) == 16
  # B=1 without remat: 2 fits, then the bisection: 8 fits, 16 does not;
  # 4 fits without compiling (a larger batch fits).
  assert [c for c in calls if c[::2] == (1, "none")] == [
    (1, 2, "none"),
    (1, 8, "none"),
    (1, 16, "none"),
  ]
  assert rows[1, "none", 4]["fits"] and not rows[1, "none", 4]["compiled"]
  assert rows[1, "none", 8]["fits"] and not rows[1, "none", 16]["fits"]
  for row in result["candidates"]:  # Compiled or not: the model's verdict.
    layers = 3 // row["num_blocks"]
    factor = 0.5 if row["remat"] == "full" else 1.0
    step = 1000 + 100 * row["per_device_batch"] * layers * factor
    held = step + 200 * (row["num_blocks"] - 1)
    assert row["fits"] == (held <= 3400), row
  best = _check_recommendation(result)
  assert (best["num_blocks"], best["per_device_batch"], best["remat"]) == (
    1,
    8,
    "none",
  )
  assert len(calls) < 16
  # Within 5%, B=3 (its parts outside the layers run three times) ties
  # with B=1, and its larger batch wins.
  config.plan.flops_tolerance = 0.05
  best = _check_recommendation(planner.plan(config, str(tmp_path)))
  assert (best["num_blocks"], best["per_device_batch"], best["remat"]) == (
    3,
    16,
    "none",
  )
  config.plan.flops_tolerance = 0.01

  calls.clear()
  config.plan.device_memory = "1000B"  # Below every step.
  result = planner.plan(config, str(tmp_path))
  assert len(calls) == 4  # The smallest batch of each B and policy.
  assert result["recommendation"] is None
  assert not any(r["fits"] for r in result["candidates"])
  assert result["message"].startswith("nothing fits")


def test_a_tiny_device_fits_nothing_and_says_what_to_change(tmp_path):
  config = _smoke(
    device_memory="1KiB",
    num_blocks=(2,),
    per_device_batch=(8,),
    remat=("none",),
  )
  result = planner.plan(config, str(tmp_path))
  assert result["recommendation"] is None and result["command"] is None
  message = result["message"]
  assert message.startswith("nothing fits in plan.device_memory=1KiB:")
  for change in ("plan.per_device_batch", "plan.num_blocks", "plan.remat"):
    assert change in message
  assert "blocks.offload=True" in message and "\n" not in message
  assert message in planner.table(result)


@pytest.mark.parametrize(
  ("text", "expected"),
  [
    ("16GiB", 16 * 2**30),
    ("80GB", 80 * 10**9),
    ("512MiB", 512 * 2**20),
    ("1.5TiB", int(1.5 * 2**40)),
  ],
)
def test_device_memory_sizes(text, expected):
  assert planner.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["16", "16 gigs", "GiB", "0GB", "-1GiB", ""])
def test_bad_device_memory_is_one_line_naming_the_field(tmp_path, text):
  config = _smoke(device_memory=text)
  with pytest.raises(ConfigError) as error:
    planner.plan(config, str(tmp_path))
  message = str(error.value)
  assert message.startswith(f"plan.device_memory={text!r} is not a memory")
  assert "16GiB" in message and "\n" not in message


def test_bad_candidates_are_one_line_errors(tmp_path):
  with pytest.raises(ConfigError, match=r"^plan\.remat='some' is unknown"):
    planner.plan(_smoke(remat=("none", "some")), str(tmp_path))
  with pytest.raises(ConfigError, match=r"^plan\.num_blocks=\(0,\) must"):
    planner.plan(_smoke(num_blocks=(0,)), str(tmp_path))
  with pytest.raises(ConfigError, match="leave no candidate"):
    planner.plan(_smoke(num_blocks=(4, 6)), str(tmp_path))


def test_most_even_split():
  assert planner.most_even(3, 2) == (2, 1)
  assert planner.most_even(7, 3) == (3, 2, 2)
  assert planner.most_even(24, 6) == (4,) * 6


def test_abstract_step_is_the_trainers_step():
  """The planner compiles the step the trainer compiles (on one device, a
  built model's real arrays), from shapes alone."""
  config = quickstart.get_config("smoke,official")
  config.parallel.data_shards = 1
  config.model.remat = "dots_saveable"
  trainer_step = memory.compiled_step_memory(config)
  cost = planner.candidate_cost(config)
  assert cost["offload_bytes"] == (
    trainer_step["argument_bytes"] + trainer_step["temp_bytes"]
  )
  others = sum(trainer_step["block_state_bytes"][1:])  # Blocks 1 and 2.
  assert cost["held_all_bytes"] == cost["offload_bytes"] + others
  per_block = flops.step_flops(copy.deepcopy(config))
  assert cost["flops_per_example"] == pytest.approx(
    3 * per_block / config.batch_size
  )


# ----- The largest sequence that fits ----------------------------------------


def test_largest_fitting_brackets_each_capacity_with_few_probes():
  """bytes = 10 x size: 100 bytes fit size 10, 1000 fit 100; from 16 the
  search doubles or halves to a bracket, then bisects."""
  calls = []

  def bytes_at(size):
    calls.append(size)
    return 10 * size

  found, probed = planner.largest_fitting(bytes_at, 16, (100, 1000), 3)
  for capacity, (lo, hi) in found.items():
    assert lo * 10 <= capacity < hi * 10
  assert found == {100: (10, 11), 1000: (96, 104)}
  assert len(calls) == len(set(calls)) == len(probed)  # Each size once.
  assert len(calls) <= 12
  nothing, _ = planner.largest_fitting(lambda n: 10**6, 4, (100,), 2)
  assert nothing == {100: (0, 1)}  # Not even one token fits.


def test_sequence_length_is_tokens_or_patches():
  lm = mdm_text8.get_config("smoke")
  assert planner.sequence_length(lm) == lm.data.seq_len
  longer = planner.with_sequence_length(lm, 96)
  assert (longer.data.seq_len, longer.model.max_seq_len) == (96, 96)
  image = dit_cifar10.get_config("smoke")  # 16x16 images, patch 4.
  assert planner.sequence_length(image) == 4
  assert planner.tokens_of(image, 4) == 16
  larger = planner.with_sequence_length(image, 6)
  assert tuple(larger.data.image_shape) == (24, 24, 3)


def test_plan_reports_the_largest_sequence_of_each_step(tmp_path):
  config = mdm_text8.get_config("smoke")
  config.plan.num_blocks = (3,)
  config.plan.per_device_batch = (4,)
  config.plan.remat = ("none",)
  config.plan.devices = 1
  config.plan.seq_len_memories = ("2MiB", "8MiB")
  config.plan.seq_len_bisections = 0  # The search's own test bisects.
  result = planner.plan(config, str(tmp_path))
  report = result["max_sequence"]
  assert report["batch"] == 4
  rows = {(r["step"], r["memory"]): r for r in report["rows"]}
  assert set(rows) == {
    (s, m) for s in ("block", "e2e") for m in ("2MiB", "8MiB")
  }
  for (_, memory_), row in rows.items():
    capacity = planner.parse_bytes(memory_)
    probes = row["probes"]
    assert row["max_tokens"] and probes[row["max_tokens"]] <= capacity
    assert row["over_tokens"] is None or probes[row["over_tokens"]] > capacity
  # The block step holds a third of the layers: longer sequences fit.
  assert (
    rows["block", "8MiB"]["max_tokens"] >= rows["e2e", "8MiB"]["max_tokens"]
  )
  text = planner.table(result)
  assert "largest sequence (tokens) at batch 4" in text
