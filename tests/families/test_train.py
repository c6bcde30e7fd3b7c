"""The trainer: workdir contents, learning, exact resume, topology, NaN."""

import copy
import json
import shutil

import chex
import jax
import numpy as np
import pytest

from dblocks_jax import families
from dblocks_jax.blockwise import steps
from dblocks_jax.cli import evaluation, memory
from dblocks_jax.errors import ConfigError, NonFiniteLossError, TopologyError
from dblocks_jax.families import common, runs, train
from dblocks_jax.training import checkpoint, metrics


def _synthetic(config, *, classes=4, steps_=12):
  config.data.name = "synthetic"
  config.data.num_classes = config.data.synthetic_num_classes = classes
  config.data.image_shape = config.data.synthetic_image_shape = (8, 8, 1)
  config.data.crop_padding = 0  # Shifts scramble random prototypes.
  config.data.flip = False
  config.total_steps = steps_
  return config


def test_run_writes_the_workdir(trained_smoke):
  _, workdir, result = trained_smoke
  assert set(result) >= {"accuracy", "num_examples", "inference_steps"}
  assert result["method"] == "dblocks" and result["step"] == 12
  assert result["num_examples"] == 300 and result["inference_steps"] == 3
  assert json.loads((workdir / "eval.json").read_text()) == result
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["topology"]["num_blocks"] == 3
  assert saved["config"]["blocks"]["sharing"] == "shared"
  rows = metrics.read_metrics(str(workdir))
  train_rows = [r for r in rows if "loss" in r]
  # Every log step, and every checkpoint step (checked for NaN first).
  assert [r["step"] for r in train_rows] == [4, 6, 8, 12]
  assert any(k.startswith("ce/block_") for k in train_rows[-1])
  assert {"steps_per_sec", "eta_seconds", "learning_rate"} <= set(
    train_rows[-1]
  )
  assert rows[-1]["eval/accuracy"] == result["accuracy"]
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), read_only=True)
  assert ckpt.all_steps() == [6, 12]
  ckpt.close()


@pytest.mark.parametrize(
  ("method", "num_steps", "threshold"),
  [("e2e", 150, 0.7), ("dblocks", 450, 0.45)],  # B=3: 150 steps per block.
)
def test_learns_a_tiny_task(
  smoke_config, tmp_path, method, num_steps, threshold
):
  config = _synthetic(smoke_config, steps_=num_steps)
  config.method = method
  config.optimizer.learning_rate = 3e-3
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 50
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["accuracy"] > threshold  # Chance is 0.25.


def test_resume_continues_exactly(smoke_config, tmp_path):
  """6 steps + resume to 12 == 12 steps in one go (params and opt state)."""
  config = smoke_config
  config.optimizer.schedule = "constant"  # Independent of total_steps.
  config.total_steps = 12
  train.train_and_evaluate(config, str(tmp_path / "once"))
  config.total_steps = 6
  train.train_and_evaluate(config, str(tmp_path / "twice"))
  config.total_steps = 12
  train.train_and_evaluate(config, str(tmp_path / "twice"))

  def final(path):
    _, _, trainer = runs.restore_run(config, str(path), with_optimizer=True)
    return jax.device_get(trainer.state)

  chex.assert_trees_all_equal(
    final(tmp_path / "once"), final(tmp_path / "twice"), strict=True
  )
  rows = metrics.read_metrics(str(tmp_path / "twice"))
  assert [r["step"] for r in rows if "loss" in r] == [4, 6, 8, 12]


def _offload_run(config, offload: bool, num_steps: int):
  """(trainer, [(block trained, memory kinds of each block's arrays)])
  after each of `num_steps` steps."""
  config = copy.deepcopy(config)
  config.blocks.offload = offload
  family = families.get(config.model.name)
  trainer = common.make_trainer(config, family.build(config), None)
  data = family.train_data(config, trainer.stream_specs(config.batch_size))
  placements = []
  for _ in range(num_steps):
    (block,) = trainer.next_blocks()
    trainer.step(next(data[None]))
    kinds = [
      {x.sharding.memory_kind for x in jax.tree.leaves(b)}
      for b in trainer.state["blocks"]
    ]
    placements.append((block, kinds))
  return trainer, placements


def test_offload_keeps_idle_blocks_on_the_host_and_changes_nothing(
  smoke_config,
):
  """XLA:CPU exposes `device`, `pinned_host` and `unpinned_host` memories
  (the same RAM): the placement is observable on CPU, the saving is not."""
  kinds = {m.kind for m in jax.devices()[0].addressable_memories()}
  assert {"device", "pinned_host"} <= kinds
  plain, placed = _offload_run(smoke_config, False, 8)
  offloaded, moved = _offload_run(smoke_config, True, 8)
  assert [b for b, _ in placed] == [b for b, _ in moved]  # Same schedule.
  drawn = [b for b, _ in moved]
  assert len(set(drawn)) == 3 and any(
    a == b for a, b in zip(drawn, drawn[1:], strict=False)
  )  # Switches and a repeat.
  for block, kinds in moved:  # After each step: only its block on device.
    assert kinds == [
      {"device"} if b == block else {"pinned_host"} for b in range(3)
    ]
  assert all(kinds == [{"device"}] * 3 for _, kinds in placed)
  assert offloaded.memory_kind(drawn[-1]) is None
  assert offloaded.memory_kind((drawn[-1] + 1) % 3) == "pinned_host"
  # Bit-identical parameters and optimizer states, and inference.
  chex.assert_trees_all_equal(
    jax.device_get(plain.state), jax.device_get(offloaded.state), strict=True
  )
  inference = offloaded.arrays()
  assert all(
    x.sharding.memory_kind == "device" for x in jax.tree.leaves(inference)
  )
  chex.assert_trees_all_equal(
    jax.device_get(plain.arrays()), jax.device_get(inference), strict=True
  )
  # Inference made copies; the state stays where it was.
  assert [
    {x.sharding.memory_kind for x in jax.tree.leaves(b)}
    for b in offloaded.state["blocks"]
  ] == moved[-1][1]


def test_offload_checkpoints_resume_with_or_without_it(smoke_config, tmp_path):
  """6 steps with offload + 6 without == 12 steps with offload; a restored
  run puts every block in host memory until one trains."""
  config = smoke_config
  config.optimizer.schedule = "constant"
  config.blocks.offload = True
  config.total_steps = 12
  once = train.train_and_evaluate(config, str(tmp_path / "once"))
  config.total_steps = 6
  train.train_and_evaluate(config, str(tmp_path / "twice"))
  config.total_steps = 12
  config.blocks.offload = False
  twice = train.train_and_evaluate(config, str(tmp_path / "twice"))
  assert once["accuracy"] == twice["accuracy"]
  config.blocks.offload = True
  _, _, restored = runs.restore_run(
    config, str(tmp_path / "once"), with_optimizer=True
  )
  kinds = {
    x.sharding.memory_kind
    for b in restored.state["blocks"]
    for x in jax.tree.leaves(b)
  }
  assert kinds == {"pinned_host"}
  config.blocks.offload = False
  _, _, plain = runs.restore_run(
    config, str(tmp_path / "twice"), with_optimizer=True
  )
  chex.assert_trees_all_equal(
    jax.device_get(restored.state), jax.device_get(plain.state), strict=True
  )


def test_changed_topology_is_refused(smoke_config, tmp_path):
  smoke_config.total_steps = 6
  train.train_and_evaluate(smoke_config, str(tmp_path))
  smoke_config.blocks.num_blocks = 1
  with pytest.raises(TopologyError, match=r"num_blocks: 3 -> 1"):
    train.train_and_evaluate(smoke_config, str(tmp_path))
  smoke_config.blocks.num_blocks = 3
  smoke_config.blocks.sharing = "independent"
  with pytest.raises(TopologyError, match="sharing: shared -> independent"):
    train.train_and_evaluate(smoke_config, str(tmp_path))


def test_nan_stops_the_run_and_keeps_the_last_checkpoint(
  smoke_config, tmp_path, monkeypatch
):
  real_build = steps.build_train_step

  def poisoned(*args, **kwargs):
    step_fn = real_build(*args, **kwargs)

    def wrapped(block, shared, fixed, batch, key, block_index, step):
      new_block, new_shared, m = step_fn(
        block, shared, fixed, batch, key, block_index, step
      )
      if step >= 8:
        m = dict(m, loss=m["loss"] * np.nan)
      return new_block, new_shared, m

    return wrapped

  monkeypatch.setattr(steps, "build_train_step", poisoned)
  with pytest.raises(NonFiniteLossError, match=r"step 9 \(block \d\)"):
    train.train_and_evaluate(smoke_config, str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [6]
  ckpt.close()
  monkeypatch.setattr(steps, "build_train_step", real_build)
  result = train.train_and_evaluate(smoke_config, str(tmp_path))  # Resumes.
  assert result["step"] == 12


def test_a_failed_start_up_check_gives_the_workdir_back(
  smoke_config, tmp_path, monkeypatch
):
  family = families.get(smoke_config.model.name)

  def missing_weights(*args):
    raise ConfigError("eval.features: no such file; train it first.")

  monkeypatch.setattr(family, "evaluator", missing_weights)
  with pytest.raises(ConfigError, match="no such file"):
    train.train_and_evaluate(smoke_config, str(tmp_path))
  assert not (tmp_path / "LOCK").exists()
  monkeypatch.undo()
  smoke_config.total_steps = 6
  assert train.train_and_evaluate(smoke_config, str(tmp_path))["step"] == 6


def test_eval_mode_takes_any_number_of_steps(trained_smoke, tmp_path):
  config, trained, _ = trained_smoke
  shutil.copytree(trained, tmp_path / "run")
  for num_steps, method in ((3, "euler"), (7, "euler"), (4, "heun")):
    config = copy.deepcopy(config)
    config.sampler.num_steps = num_steps
    config.sampler.method = method
    result = evaluation.evaluate_checkpoint(config, str(tmp_path / "run"))
    assert result["inference_steps"] == num_steps
    assert 0.0 <= result["accuracy"] <= 1.0 and result["step"] == 12
  assert json.loads((tmp_path / "run" / "eval.json").read_text()) == result


def test_memory_report_splits_the_step(smoke_config):
  smoke_config.memory.remat_policies = ()
  report = memory.memory_report(smoke_config)
  block, e2e = report["block_step"], report["e2e_step"]
  for entry in (block, e2e):
    assert entry["temp_bytes"] > 0 and entry["argument_bytes"] > 0
    # Adam holds two moments per parameter (plus scalars).
    assert entry["step_optimizer_state_bytes"] >= 2 * entry["step_param_bytes"]
  assert block["step_param_count"] < e2e["step_param_count"]
  assert report["temp_ratio_block_over_e2e"] == pytest.approx(
    block["temp_bytes"] / e2e["temp_bytes"]
  )
  assert jax.default_backend() == report["backend"]
  # Offload: the device holds one block's state instead of all three.
  offload = report["offload"]
  blocks = block["block_state_bytes"]
  assert len(blocks) == 3 and not offload["enabled"]
  parts = block["shared_state_bytes"] + block["fixed_bytes"]
  assert offload["without"]["held_state_bytes"] == parts + sum(blocks)
  assert offload["with"]["held_state_bytes"] == parts + max(blocks)
  assert offload["with"]["host_state_bytes"] == sum(blocks) - max(blocks)
  # The compiled step reads exactly that state and the device's share of
  # the batch (and a key): 8 fake devices, each with 2 of the 16 rows.
  batch = block["batch_bytes"] // 8
  assert block["data_shards"] == 8 and offload["with"]["batch_bytes"] == batch
  read = offload["with"]["held_state_bytes"] + batch
  assert 0 <= block["argument_bytes"] - read <= 64
  for name in ("without", "with"):
    entry = offload[name]
    assert entry["total_bytes"] == (
      entry["held_state_bytes"] + batch + block["temp_bytes"]
    )
  assert offload["total_ratio_with_over_without"] < 1
  assert offload["host_memory_kind"] == "pinned_host"
  assert offload["host_is_device"]  # CPU: the host memory is the RAM.
  # What --mode=memory prints; the ViT's attention has no switch.
  attention, ratio, held = memory.summary(report)
  assert report["attention"]["block_step"].startswith("dense")
  assert attention.startswith("attention: block step dense")
  assert ratio.startswith(
    f"temp bytes block/e2e: {block['temp_bytes'] / e2e['temp_bytes']:.3f}"
  )
  assert f"{offload['with']['host_state_bytes']:,} in pinned_host" in held
  assert "nothing is saved" in held


def test_compare_trains_both_and_reports_them(tmp_path):
  from configs import quickstart
  from dblocks_jax.cli import compare

  config = quickstart.get_config("smoke")
  result = compare.compare(config, str(tmp_path))
  assert result["dblocks"]["eval"]["step"] == 12
  assert result["e2e"]["eval"]["step"] == 4  # B x fewer steps.
  assert result["e2e"]["eval"]["method"] == "e2e"
  for run in ("dblocks", "e2e"):
    assert (tmp_path / run / "eval.json").exists()
    assert result[run]["temp_bytes"] > 0 and result[run]["wall_seconds"] > 0
  assert result["temp_ratio_dblocks_over_e2e"] == pytest.approx(
    result["dblocks"]["temp_bytes"] / result["e2e"]["temp_bytes"]
  )
  assert json.loads((tmp_path / "compare.json").read_text())["settings"]
  table = compare.table(result)
  assert "DiffusionBlocks" in table and "end to end" in table
  assert "partition=explicit" in table and table.splitlines()[-1].startswith(
    "why: "
  )
  config.method = "e2e"
  with pytest.raises(ConfigError, match="Drop :e2e"):
    compare.compare(config, str(tmp_path / "again"))


def test_eval_mode_restores_the_parameters_only(trained_smoke):
  """`--mode=eval` restores with an inference-only trainer (no optimizer
  states read) and evaluates to the training run's final accuracy."""
  config, workdir, result = trained_smoke
  _, _, trainer = runs.restore_run(config, str(workdir))
  assert not trainer.trains
  assert all("opt_state" not in b for b in trainer.state["blocks"])
  trainer.close()
  again = evaluation.evaluate_checkpoint(config, str(workdir))
  assert again["accuracy"] == result["accuracy"]
