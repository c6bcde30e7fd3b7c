"""Block-parallel training on 8 fake CPU devices (conftest): the mesh step,
its communication, per-block jobs and their assembly."""

import copy
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from conftest import snapshot, xla_flags
from flax import nnx

from configs import quickstart
from dblocks_jax import families
from dblocks_jax.blockwise import steps
from dblocks_jax.blockwise.collectives import collectives_across_groups
from dblocks_jax.blockwise.layout import Layout
from dblocks_jax.cli import assemble, evaluation
from dblocks_jax.errors import ConfigError, TopologyError
from dblocks_jax.families import common, runs, train
from dblocks_jax.training import placement
from dblocks_jax.training import trainer as trainer_lib

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
# Quickstart smoke with 4 one-layer blocks, each with its own stem/readout.
FOUR_BLOCKS = (
  "--config=configs/quickstart.py:smoke,official",
  "--config.model.num_layers=4",
  "--config.blocks.num_blocks=4",
  "--config.blocks.sharing=independent",
)


def _config(sharing="independent", **parallel_fields):
  c = copy.deepcopy(quickstart.get_config("smoke,official"))
  with c.unlocked():
    c.model.num_layers = 4
    c.blocks.num_blocks = 4
    c.blocks.sharing = sharing
    c.batch_size = 8
    for k, v in parallel_fields.items():
      c.parallel[k] = v
  return c


def _set(c, fields):
  with c.unlocked():
    for path, value in fields.items():
      *sections, name = path.split(".")
      target = c[sections[0]] if sections else c
      target[name] = value
  return c


def _trainer(c, workdir=None):
  experiment = families.get(c.model.name).build(c)
  return common.make_trainer(c, experiment, workdir)


def test_layout_maps_blocks_to_groups():
  layout = Layout.create(4, num_groups=2, num_devices=8)
  assert layout.group_blocks(0) == (0, 1) and layout.group_blocks(1) == (2, 3)
  assert layout.data_shards == 4 and layout.stacked and not layout.partial
  assert layout.slot(3) == (1, 1)
  job = Layout.create(4, train_blocks=(2,), num_devices=1, sharing="x")
  assert job.partial and job.blocks == (2,) and not job.stacked


@pytest.mark.parametrize(
  ("fields", "fragments"),
  [
    ({"parallel.block_groups": 16}, ["parallel.block_groups=16", "8"]),
    ({"parallel.block_groups": 3}, ["not divisible", "block_groups=3"]),
    (
      {"blocks.train": (1,), "blocks.sharing": "shared"},
      ["blocks.sharing", "independent"],
    ),
    (
      {"parallel.block_groups": 2, "blocks.layer_distribution": (1, 1, 1, 1)},
      None,
    ),
    (
      {
        "parallel.block_groups": 2,
        "model.num_layers": 5,
        "blocks.layer_distribution": (2, 1, 1, 1),
      },
      ["equal layer counts", "[2, 1, 1, 1]"],
    ),
    ({"parallel.block_groups": 2, "parallel.data_shards": 8}, ["needs 16"]),
    ({"parallel.block_groups": 2, "batch_size": 6}, ["batch_size=6", "4"]),
  ],
)
def test_layout_validation(fields, fragments):
  c = _set(_config(), fields)
  if fragments is None:
    trainer = _trainer(c)
    assert (trainer.layout.num_groups, trainer.layout.data_shards) == (2, 4)
    return
  with pytest.raises(ConfigError) as error:
    _trainer(c)
  for fragment in fragments:
    assert fragment in str(error.value)


def _batches(c, seed=0):
  rng = np.random.default_rng(seed)
  return {
    b: {
      "image": rng.normal(size=(8, 8, 8, 1)).astype(np.float32),
      "label": rng.integers(0, 10, 8).astype(np.int32),
    }
    for b in range(4)
  }


def test_mesh_step_equals_four_single_block_steps():
  """B=4 blocks on 4 groups x 2 data shards = blocks 0..3 stepped alone."""
  c = _config(block_groups=4)
  trainer = _trainer(c)
  assert trainer.next_blocks() == [0, 1, 2, 3]
  trainer.step(_batches(c, seed=1))  # Update 0 of each (learning rate 0).
  init = snapshot(trainer.state)
  batches = _batches(c)
  mesh_metrics = trainer.step(batches)
  after = jax.device_get(trainer.state)
  assert list(after["updates"]) == [2, 2, 2, 2] and int(after["step"]) == 8
  single = steps.build_train_step(
    steps.loss_of(trainer.task, trainer.graphdefs, trainer.plan, 0),
    trainer.optimizers.for_groups(0),
    clip_norm=c.optimizer.clip_norm,
    donate=False,
  )
  for b in range(4):
    # Update n=1 of block b: key fold_in(fold_in(seed, b), 1), and the
    # learning rate of global step n B = 4.
    seed_key = jax.random.key(c.seed)
    key = jax.random.fold_in(jax.random.fold_in(seed_key, b), 1)
    new, _, metrics = single(
      init["blocks"][b], {}, init["fixed"], batches[b], key, b, 4
    )
    np.testing.assert_allclose(
      float(mesh_metrics["loss"][b]), float(metrics["loss"]), rtol=1e-5
    )
    for x, y in zip(
      jax.tree.leaves(new), jax.tree.leaves(after["blocks"][b]), strict=True
    ):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    moved = jax.tree.map(
      lambda x, y: not np.allclose(x, y),
      new["params"],
      init["blocks"][b]["params"],
    )
    assert any(jax.tree.leaves(moved))


def test_data_parallel_equals_one_device():
  """G = 1 over 4 devices (batch split, gradients reduced) = one device."""
  results = []
  for shards in (1, 4):
    c = _config("shared", data_shards=shards)
    trainer = _trainer(c)
    assert trainer.layout.data_shards == shards
    batches = _batches(c)
    for i in range(3):
      trainer.step(batches[i])
    results.append(jax.device_get(trainer.state))
  for x, y in zip(
    jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True
  ):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-6)


def _hlo(c):
  trainer = _trainer(c)
  batch = families.get("vit").batch_spec(c)
  return trainer.lower_step(batch).compile().as_text(), trainer.mesh


def test_independent_mode_never_communicates_across_blocks():
  hlo, mesh = _hlo(_config(block_groups=4))
  assert "all-reduce" in hlo  # The batch mean within each group...
  assert collectives_across_groups(hlo, mesh) == []  # ...only.

  hlo, mesh = _hlo(_config("shared", block_groups=4))
  crossing = collectives_across_groups(hlo, mesh)
  # The shared stem/readout's gradients, averaged across the blocks.
  assert crossing and all(c.startswith("all-reduce") for c in crossing)


def test_replica_group_notations():
  devices = np.array(jax.devices()[:8]).reshape(4, 2)
  mesh = jax.sharding.Mesh(devices, ("block", "data"))
  within = (
    "%x = f32[4]{0} all-reduce(f32[4]{0} %y), channel_id=1,"
    " replica_groups=[4,2]<=[8], to_apply=%add\n"
  )
  across = within.replace("[4,2]<=[8]", "[2,4]<=[4,2]T(1,0)")
  listed = within.replace("[4,2]<=[8]", "{{0,1},{2,3},{4,5},{6,7}}")
  mesh_form = within.replace(
    "[4,2]<=[8]", "mesh['axis_0'=4,'axis_1'=2] {'axis_0'}"
  )
  assert collectives_across_groups(within, mesh) == []
  assert collectives_across_groups(listed, mesh) == []
  assert collectives_across_groups(across, mesh)
  assert collectives_across_groups(mesh_form, mesh)
  unknown = within.replace("replica_groups=[4,2]<=[8]", "replica_groups={}")
  assert collectives_across_groups(unknown, mesh)


def test_per_block_job_holds_only_its_block():
  c = _set(_config(), {"blocks.train": (2,)})
  experiment = families.get("vit").build(c, held_blocks=(2,))
  # The other blocks were built as shapes only, never as arrays.
  other = jax.tree.leaves(nnx.state(experiment.model.blocks[0]["layers"]))
  assert other and all(isinstance(x, jax.ShapeDtypeStruct) for x in other)
  job = common.make_trainer(c, experiment, None).state
  assert [bool(b) for b in job["blocks"]] == [False, False, True, False]
  full = _trainer(_config()).state
  for x, y in zip(
    jax.tree.leaves(job["blocks"][2]),
    jax.tree.leaves(full["blocks"][2]),
    strict=True,
  ):
    np.testing.assert_array_equal(x, y)


def _cli(*args, workdir, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = xla_flags(
    f"--xla_force_host_platform_device_count={devices}"
  )
  return subprocess.Popen(
    [sys.executable, "-m", "dblocks_jax.main", *args, f"--workdir={workdir}"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
  )


def _wait(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
  """A 4x2 mesh run, four per-block jobs, and a job with another table."""
  root = tmp_path_factory.mktemp("parallel")
  procs = [
    _cli(
      *FOUR_BLOCKS,
      "--config.parallel.block_groups=4",
      workdir=root / "mesh",
      devices=8,
    )
  ]
  for b in range(4):
    procs.append(
      _cli(
        *FOUR_BLOCKS, f"--config.blocks.train=({b},)", workdir=root / f"b{b}"
      )
    )
  procs.append(
    _cli(
      *FOUR_BLOCKS,
      "--config.blocks.train=(0,)",
      "--config.blocks.target_table_seed=1",
      workdir=root / "b0_other_table",
    )
  )
  outputs = [_wait(p) for p in procs]
  assert "accuracy:" in outputs[0]
  assert "trained blocks [1]" in outputs[2] and "--mode=assemble" in outputs[2]
  return root


def test_per_block_jobs_assemble_into_the_mesh_run(jobs, tmp_path):
  result = assemble.assemble(
    _config(), str(tmp_path / "all"), [str(jobs / f"b{b}") for b in range(4)]
  )
  assert result["step"] == 12 and result["num_blocks"] == 4
  mesh_run = runs.restore_run(
    runs.read_run_config(str(jobs / "mesh")),
    str(jobs / "mesh"),
    with_optimizer=True,
  )[2].state
  assembled = runs.restore_run(
    _config(), str(tmp_path / "all"), with_optimizer=True
  )[2].state
  for x, y in zip(
    jax.tree.leaves(mesh_run["blocks"]),
    jax.tree.leaves(assembled["blocks"]),
    strict=True,
  ):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
  # It evaluates like a model trained in one job.
  c = _config()
  accuracy = evaluation.evaluate_checkpoint(c, str(tmp_path / "all"))
  assert accuracy["inference_steps"] == 4 and 0 <= accuracy["accuracy"] <= 1


def test_assemble_refuses_mismatched_jobs(jobs, tmp_path):
  blocks = [str(jobs / f"b{b}") for b in range(4)]
  with pytest.raises(ConfigError, match="trained by both"):
    assemble.assemble(_config(), str(tmp_path / "a"), blocks + blocks[:1])
  with pytest.raises(ConfigError, match=r"no source trains block\(s\) \[3\]"):
    assemble.assemble(_config(), str(tmp_path / "b"), blocks[:3])
  with pytest.raises(ConfigError, match="target tables"):
    other = [str(jobs / "b0_other_table")] + blocks[1:]
    assemble.assemble(_config(), str(tmp_path / "c"), other)
  wider = _config()
  with wider.unlocked():
    wider.model.width = 32
  with pytest.raises(ConfigError, match="model.width: 24 vs 32"):
    assemble.assemble(wider, str(tmp_path / "d"), blocks)
  job = runs.read_run_config(blocks[1])
  with pytest.raises(ConfigError, match="per-block job"):
    evaluation.evaluate_checkpoint(job, blocks[1])
  deeper = _config()
  with deeper.unlocked():
    deeper.model.num_layers = 8
  with pytest.raises(TopologyError, match="num_layers"):
    assemble.assemble(deeper, str(tmp_path / "e"), blocks)


def test_per_block_job_resumes_exactly(tmp_path):
  c = _config(data_shards=1)
  with c.unlocked():
    c.blocks.train = (1,)
    c.checkpoint_every_steps = 1
    c.keep_checkpoints = 5
  result = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert result == {
    "step": 3,
    "method": "dblocks",
    "blocks": [1],
    "complete": False,
  }

  def block_1():
    trainer = runs.restore_run(
      c, str(tmp_path / "run"), complete=False, with_optimizer=True
    )[2]
    return snapshot(trainer.state["blocks"][1])

  final = block_1()
  shutil.rmtree(tmp_path / "run" / "checkpoints" / "3")
  train.train_and_evaluate(c, str(tmp_path / "run"))
  resumed = block_1()
  for x, y in zip(
    jax.tree.leaves(final), jax.tree.leaves(resumed), strict=True
  ):
    np.testing.assert_array_equal(x, np.asarray(y))


@pytest.mark.parametrize(
  ("overrides", "devices", "fragment"),
  [
    (["--config.parallel.block_groups=2"], 1, "needs at least 2 devices"),
    (
      ["--config.parallel.block_groups=2"],  # B=3 on 2 groups.
      2,
      "not divisible by parallel.block_groups=2",
    ),
    (["--config.blocks.train=(0,)"], 1, "blocks.sharing='independent'"),
  ],
)
def test_parallel_bad_input_is_one_line(tmp_path, overrides, devices, fragment):
  proc = _cli(
    "--config=configs/quickstart.py:smoke,official",
    *overrides,
    workdir=tmp_path,
    devices=devices,
  )
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 2, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: ") and fragment in last, last


def test_block_groups_need_a_blockwise_run():
  c = _config(block_groups=2)
  with c.unlocked():
    c.method = "e2e"
  with pytest.raises(ConfigError, match="parallel.block_groups=2"):
    families.get("vit").build(c)


def test_offload_applies_to_the_blocks_a_group_holds(monkeypatch):
  """A per-block job keeps its idle blocks in host memory; a mesh of one
  block per group has none to move; stacked blocks refuse, in one line."""
  job = _set(_config(), {"blocks.train": (1, 3), "blocks.offload": True})
  trainer = _trainer(job)
  kinds = [
    {x.sharding.memory_kind for x in jax.tree.leaves(b)}
    for b in trainer.state["blocks"]
  ]
  assert kinds == [set(), {"pinned_host"}, set(), {"pinned_host"}]
  one_each = _set(_config(block_groups=4), {"blocks.offload": True})
  assert not _trainer(one_each).offload  # Every held block trains each step.
  stacked = _set(_config(block_groups=2), {"blocks.offload": True})
  with pytest.raises(ConfigError) as info:
    _trainer(stacked)
  message = str(info.value)
  assert message.startswith(
    "blocks.offload=True cannot apply to parallel.block_groups=2"
  )
  assert "parallel.block_groups=4" in message and "\n" not in message
  monkeypatch.setattr(placement, "host_memory_kind", lambda device: None)
  with pytest.raises(ConfigError, match=r"blocks.offload=True needs host"):
    _trainer(_set(_config(), {"blocks.offload": True}))


def test_offload_needs_a_blockwise_model():
  c = _set(_config(sharing="shared"), {"method": "e2e"})
  exp = families.get("vit").build(c)
  with pytest.raises(ValueError, match="end-to-end network has no blocks"):
    trainer_lib.Trainer(
      exp.model, exp.task, None, optax.adam(1e-3), offload=True
    )
