"""Block-parallel training on 8 fake CPU devices (conftest): the mesh step,
its communication, per-block jobs and their assembly."""

import copy
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import snapshot

from configs import quickstart
from dblocks_jax import assemble, experiment, parallel_train, state, train
from dblocks_jax.blockwise import optim, parallel, steps
from dblocks_jax.errors import ConfigError, TopologyError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Quickstart smoke with 4 one-layer blocks, each with its own stem/readout.
FOUR_BLOCKS = (
  "--config=configs/quickstart.py:smoke",
  "--config.model.num_layers=4",
  "--config.blocks.num_blocks=4",
  "--config.blocks.sharing=independent",
)


def _config(sharing="independent", **parallel_fields):
  c = copy.deepcopy(quickstart.get_config("smoke"))
  with c.unlocked():
    c.model.num_layers = 4
    c.blocks.num_blocks = 4
    c.blocks.sharing = sharing
    c.batch_size = 8
    for k, v in parallel_fields.items():
      c.parallel[k] = v
  return c


def test_layout_maps_blocks_to_groups_and_steps():
  layout = parallel.Layout(
    (0, 1, 2, 3), num_groups=2, data_shards=4, num_blocks=4
  )
  assert layout.group_blocks(0) == (0, 1) and layout.group_blocks(1) == (2, 3)
  assert [layout.blocks_at(m) for m in range(4)] == [
    (0, 2),
    (1, 3),
    (0, 2),
    (1, 3),
  ]
  assert [layout.update_count(m) for m in range(4)] == [0, 0, 1, 1]
  # 12 sequential steps = 3 updates per block = 6 mesh steps of 2 blocks.
  assert layout.mesh_steps(12) == 6 and layout.block_updates(6) == 12
  job = parallel.Layout((2,), num_groups=1, data_shards=1, num_blocks=4)
  assert job.partial and job.mesh_steps(12) == 3 and job.blocks_at(5) == (2,)


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
    ({"parallel.block_groups": 2, "batch_size": 6}, ["batch_size=6"]),
  ],
)
def test_layout_validation(fields, fragments):
  c = _config()
  with c.unlocked():
    for path, value in fields.items():
      *sections, name = path.split(".")
      target = c[sections[0]] if sections else c
      target[name] = value
  plan = experiment.build(c).plan
  if fragments is None:
    layout = parallel.layout_from_config(c, plan.layers_per_block, 8)
    assert (layout.num_groups, layout.data_shards) == (2, 4)
    return
  with pytest.raises(ConfigError) as error:
    parallel.layout_from_config(c, plan.layers_per_block, 8)
  for fragment in fragments:
    assert fragment in str(error.value)


def _mesh_inputs(c):
  exp = experiment.build(c)
  tx = optim.make_optimizer(c.optimizer)
  graphdefs, init = state.init_state(exp, tx)
  layout = parallel.layout_from_config(c, exp.plan.layers_per_block, 8)
  mesh = parallel.make_mesh(layout)
  lr_fn = optim.learning_rate_fn(c.optimizer, c.total_steps)
  loss_fn = train.make_loss(exp, graphdefs, c, 0)
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.normal(size=(4, 8, 8, 8, 1)).astype(np.float32),
    "label": rng.integers(0, 10, (4, 8)).astype(np.int32),
  }
  return exp, tx, snapshot(init), layout, mesh, lr_fn, loss_fn, batch


def _compile_mesh_step(c):
  exp, tx, init, layout, mesh, lr_fn, loss_fn, batch = _mesh_inputs(c)
  has_shared = bool(init["shared"])
  step = parallel.build_parallel_step(
    loss_fn,
    tx,
    lr_fn,
    mesh,
    num_blocks=4,
    clip_norm=c.optimizer.clip_norm,
    has_shared=has_shared,
  )
  stacked = parallel.stack(dict(enumerate(init["blocks"])), layout, mesh)
  keys = jnp.stack(
    [parallel.update_key(jax.random.key(0), b, 1) for b in range(4)]
  )
  args = (
    stacked,
    parallel.replicate(init["shared"], mesh),
    parallel.replicate(init["fixed"], mesh),
    jax.device_put(batch, parallel.batch_sharding(mesh)),
    keys,
    jnp.arange(4),
    0,
    1,
  )
  return step, args, (init, layout, mesh, lr_fn, loss_fn, batch, keys, tx)


def test_mesh_step_equals_four_single_block_steps():
  """B=4 blocks x 2 data shards = blocks 0..3 stepped one after another."""
  c = _config(block_groups=4)
  step, args, (init, layout, _, lr_fn, loss_fn, batch, keys, tx) = (
    _compile_mesh_step(c)
  )
  stacked, _, mesh_metrics = step(*args)
  after = jax.device_get(parallel.unstack(stacked, layout))
  single = steps.build_train_step(
    loss_fn, tx, lr_fn, clip_norm=c.optimizer.clip_norm, donate=False
  )
  for b in range(4):
    groups = {"block": init["blocks"][b]}
    block_batch = jax.tree.map(lambda x, b=b: x[b], batch)
    # Update n=1 of block b stands for global step n x B = 4.
    new, metrics = single(groups, init["fixed"], block_batch, keys[b], 4, b)
    np.testing.assert_allclose(
      float(mesh_metrics["loss"][b]), float(metrics["loss"]), rtol=1e-5
    )
    for x, y in zip(
      jax.tree.leaves(new["block"]), jax.tree.leaves(after[b]), strict=True
    ):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    # The step moved the block.
    moved = jax.tree.map(
      lambda x, y: not np.allclose(x, y),
      new["block"]["params"],
      init["blocks"][b]["params"],
    )
    assert any(jax.tree.leaves(moved))


def test_independent_mode_never_communicates_across_blocks():
  step, args, rest = _compile_mesh_step(_config(block_groups=4))
  hlo = step.lower(*args).compile().as_text()
  assert "all-reduce" in hlo  # The batch mean within each group...
  assert parallel.collectives_across_groups(hlo, rest[2]) == []  # ...only.

  step, args, rest = _compile_mesh_step(_config("shared", block_groups=4))
  crossing = parallel.collectives_across_groups(
    step.lower(*args).compile().as_text(), rest[2]
  )
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
  assert parallel.collectives_across_groups(within, mesh) == []
  assert parallel.collectives_across_groups(listed, mesh) == []
  assert parallel.collectives_across_groups(across, mesh)
  assert parallel.collectives_across_groups(mesh_form, mesh)
  unknown = within.replace("replica_groups=[4,2]<=[8]", "replica_groups={}")
  assert parallel.collectives_across_groups(unknown, mesh)


def test_per_block_job_holds_only_its_block():
  c = _config()
  with c.unlocked():
    c.blocks.train = (2,)
  exp = experiment.build(c)
  tx = optim.make_optimizer(c.optimizer)
  _, job = state.init_state(exp, tx, blocks=(2,))
  assert [bool(b) for b in job["blocks"]] == [False, False, True, False]
  # The other blocks were built as shapes only, never as arrays.
  other = jax.tree.leaves(exp.model.blocks[0]["layers"])
  assert other and all(isinstance(x, jax.ShapeDtypeStruct) for x in other)
  full = state.init_state(experiment.build(_config()), tx)[1]
  for x, y in zip(
    jax.tree.leaves(job["blocks"][2]),
    jax.tree.leaves(full["blocks"][2]),
    strict=True,
  ):
    np.testing.assert_array_equal(x, y)


def _cli(*args, workdir, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
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
  mesh_run = state.restore_run(
    state.read_run_config(str(jobs / "mesh")), str(jobs / "mesh")
  )[2]
  assembled = state.restore_run(_config(), str(tmp_path / "all"))[2]
  for x, y in zip(
    jax.tree.leaves(mesh_run["blocks"]),
    jax.tree.leaves(assembled["blocks"]),
    strict=True,
  ):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
  # It evaluates like a model trained in one job.
  c = _config()
  accuracy = train.evaluate_checkpoint(c, str(tmp_path / "all"))
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
  job = state.read_run_config(blocks[1])
  with pytest.raises(ConfigError, match="per-block job"):
    train.evaluate_checkpoint(job, blocks[1])
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
  result = parallel_train.train_parallel(c, str(tmp_path / "run"))
  assert result == {
    "step": 3,
    "method": "dblocks",
    "blocks": [1],
    "complete": False,
  }
  final = snapshot(
    state.restore_run(c, str(tmp_path / "run"), complete=False)[2]["blocks"][1]
  )
  shutil.rmtree(tmp_path / "run" / "checkpoints" / "3")
  parallel_train.train_parallel(c, str(tmp_path / "run"))
  resumed = state.restore_run(c, str(tmp_path / "run"), complete=False)[2][
    "blocks"
  ][1]
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
    (["--config.blocks.train=(0,)"], 1, "blocks.sharing=independent"),
  ],
)
def test_parallel_bad_input_is_one_line(tmp_path, overrides, devices, fragment):
  proc = _cli(
    "--config=configs/quickstart.py:smoke",
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
    parallel.is_parallel(c)
  assert not parallel.is_parallel(_config())
  assert parallel.is_parallel(_config(block_groups=2))
