"""Tests of dblocks_jax.training.checkpoint."""

import os
import subprocess
import sys
import textwrap

import chex
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dblocks_jax import errors
from dblocks_jax.training import checkpoint

_REPO_ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
_META = {"num_blocks": 3, "partition": "equiprobable"}


class _Model(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.linear = nnx.Linear(3, 4, rngs=rngs)
    self.norm = nnx.BatchNorm(4, rngs=rngs)


def _make_state(seed: int = 0):
  """A state like the trainer's: nnx.State, optax state, list, step."""
  model = _Model(nnx.Rngs(seed))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
  opt_state = tx.init(params)
  block = {"params": params, "rest": rest, "opt": opt_state}
  return {
    "blocks": [block, jax.tree.map(lambda x: x + 1, block)],
    "step": jnp.array(7, jnp.int32),
  }


def _iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=1).batch(4))


def _iter_dataset_iterator():
  ds = grain.MapDataset.range(100).shuffle(seed=1).batch(4).to_iter_dataset()
  return iter(ds)


def _save_sync(path, steps, **kwargs):
  ckpt = checkpoint.Checkpointer(path, save_interval_steps=1, **kwargs)
  state = _make_state()
  for step in steps:
    assert ckpt.save(step, state, metadata={**_META, "step": step})
  ckpt.close()
  return state


def test_round_trip_keeps_types(tmp_path):
  state = _make_state()
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  assert ckpt.latest_step() is None
  assert ckpt.save(1000, state, metadata=_META)
  target = jax.eval_shape(lambda: _make_state(seed=1))
  restored, meta = ckpt.restore(target)
  ckpt.close()

  assert meta == _META
  chex.assert_trees_all_equal(restored, state, strict=True)
  block = restored["blocks"][1]
  assert isinstance(block["params"], nnx.State)
  assert isinstance(block["rest"], nnx.State)
  assert type(block["opt"]) is type(state["blocks"][1]["opt"])
  assert isinstance(block["opt"].hyperparams["learning_rate"], jax.Array)
  assert restored["step"].dtype == jnp.int32


def test_restore_into_concrete_arrays(tmp_path):
  state = _make_state()
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_interval_steps=1)
  ckpt.save(3, state, metadata=_META)
  restored, _ = ckpt.restore(_make_state(seed=5), step=3)
  ckpt.close()
  chex.assert_trees_all_equal(restored, state, strict=True)


def test_latest_step_and_max_to_keep(tmp_path):
  path = str(tmp_path / "ckpt")
  _save_sync(path, [10, 20, 30, 40], max_to_keep=2)
  ckpt = checkpoint.Checkpointer(path, max_to_keep=2)
  assert ckpt.latest_step() == 40
  assert ckpt.all_steps() == [30, 40]
  assert sorted(os.listdir(path)) == ["30", "40"]
  assert ckpt.read_metadata()["step"] == 40
  assert ckpt.read_metadata(30)["step"] == 30
  assert ckpt.read_metadata(10) is None
  with pytest.raises(FileNotFoundError, match="step 10"):
    ckpt.restore(jax.eval_shape(_make_state), step=10)
  ckpt.close()


def test_interval_force_and_duplicates(tmp_path):
  state = _make_state()
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_interval_steps=100)
  assert ckpt.should_save(200)
  assert not ckpt.should_save(150)
  assert not ckpt.save(150, state, metadata=_META)
  assert ckpt.latest_step() is None
  assert ckpt.save(200, state, metadata=_META)
  assert not ckpt.save(200, state, metadata=_META)
  assert not ckpt.save(200, state, metadata=_META, force=True)
  assert ckpt.save(250, state, metadata=_META, force=True)
  assert not ckpt.save(220, state, metadata=_META, force=True)  # Older.
  ckpt.wait_until_finished()
  assert ckpt.all_steps() == [200, 250]
  ckpt.close()


def test_metadata_must_be_json(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_interval_steps=1)
  with pytest.raises(TypeError, match="JSON"):
    ckpt.save(1, _make_state(), metadata={"bad": object()})
  assert ckpt.latest_step() is None
  ckpt.close()


def test_bad_options():
  with pytest.raises(errors.ConfigError, match="max_to_keep"):
    checkpoint.Checkpointer("/tmp/unused", max_to_keep=0)
  with pytest.raises(errors.ConfigError, match="save_interval_steps"):
    checkpoint.Checkpointer("/tmp/unused", save_interval_steps=0)


def test_read_metadata_without_state(tmp_path):
  path = str(tmp_path / "ckpt")
  _save_sync(path, [5])
  ckpt = checkpoint.Checkpointer(path)
  assert ckpt.read_metadata() == {**_META, "step": 5}
  ckpt.close()
  empty = checkpoint.Checkpointer(str(tmp_path / "empty"))
  assert empty.read_metadata() is None
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    empty.restore(jax.eval_shape(_make_state))
  empty.close()


@pytest.mark.parametrize("make_iterator", [_iter_dataset_iterator, _iterator])
def test_data_iterator_round_trip(tmp_path, make_iterator):
  path = str(tmp_path / "ckpt")
  it = make_iterator()
  for _ in range(3):
    next(it)
  state = _make_state()
  ckpt = checkpoint.Checkpointer(path, save_interval_steps=1)
  assert ckpt.save(3, state, data_iterator=it, metadata=_META)
  expected = next(it)
  ckpt.close()

  fresh = make_iterator()
  ckpt = checkpoint.Checkpointer(path)
  restored, meta = ckpt.restore(
    jax.eval_shape(_make_state), data_iterator=fresh
  )
  np.testing.assert_array_equal(next(fresh), expected)
  chex.assert_trees_all_equal(restored, state, strict=True)
  assert meta == _META
  # The data item is optional when restoring.
  restored, _ = ckpt.restore(jax.eval_shape(_make_state))
  chex.assert_trees_all_equal(restored, state, strict=True)
  ckpt.close()


def test_data_iterator_missing_in_checkpoint(tmp_path):
  path = str(tmp_path / "ckpt")
  _save_sync(path, [1])
  ckpt = checkpoint.Checkpointer(path)
  with pytest.raises(errors.ConfigError, match="no data iterator position"):
    ckpt.restore(jax.eval_shape(_make_state), data_iterator=_iterator())
  ckpt.close()


def test_relative_missing_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ckpt = checkpoint.Checkpointer(os.path.join("run", "checkpoints"))
  assert os.path.isabs(ckpt.directory)
  assert os.path.isdir(tmp_path / "run" / "checkpoints")
  assert ckpt.save(1, _make_state(), metadata=_META, force=True)
  ckpt.close()
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "1" / "state")


def test_unfinished_save_is_ignored(tmp_path):
  path = str(tmp_path / "ckpt")
  state = _save_sync(path, [10])
  # What an interrupted save of step 20 leaves behind.
  tmp_dir = os.path.join(path, "20.orbax-checkpoint-tmp")
  os.makedirs(os.path.join(tmp_dir, "state"))
  with open(os.path.join(tmp_dir, "state", "partial"), "w") as f:
    f.write("half a checkpoint")

  ckpt = checkpoint.Checkpointer(path, save_interval_steps=10)
  assert ckpt.latest_step() == 10
  restored, meta = ckpt.restore(jax.eval_shape(_make_state))
  chex.assert_trees_all_equal(restored, state, strict=True)
  assert meta["step"] == 10
  # Saving step 20 again replaces the leftover.
  assert ckpt.save(20, state, metadata=_META)
  ckpt.close()
  assert sorted(os.listdir(path)) == ["10", "20"]


def test_killed_during_save_keeps_previous(tmp_path):
  """A process killed in the middle of a save, for real."""
  path = str(tmp_path / "ckpt")
  script = textwrap.dedent(f"""
      import os
      import jax.numpy as jnp
      from dblocks_jax.training import checkpoint

      class DiesInSave:
        def get_state(self):
          os._exit(3)

      ckpt = checkpoint.Checkpointer({path!r}, save_interval_steps=1)
      state = {{"w": jnp.arange(1000.0)}}
      ckpt.save(1, state, metadata={{"step": 1}})
      ckpt.wait_until_finished()
      ckpt.save(2, state, data_iterator=DiesInSave(), metadata={{"step": 2}})
  """)
  env = dict(os.environ, PYTHONPATH=_REPO_ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, timeout=120
  )
  assert proc.returncode == 3, proc.stderr.decode()[-2000:]
  assert any(".orbax-checkpoint-tmp" in name for name in os.listdir(path))

  ckpt = checkpoint.Checkpointer(path)
  assert ckpt.latest_step() == 1
  target = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}
  restored, meta = ckpt.restore(target)
  np.testing.assert_array_equal(restored["w"], np.arange(1000.0))
  assert meta == {"step": 1}
  ckpt.close()


# ----- Damaged checkpoints ----------------------------------------------------


def _largest_file(step_dir):
  files = [
    os.path.join(root, name)
    for root, _, names in os.walk(os.path.join(step_dir, "state"))
    for name in names
  ]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _garble(step_dir):
  path = _largest_file(step_dir)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 3)
    f.write(b"\x5a" * (size // 3))


def _delete_file(step_dir):
  os.remove(_largest_file(step_dir))


def _uncommit(step_dir):
  """A step directory whose state item was never written."""
  import shutil

  shutil.rmtree(os.path.join(step_dir, "state"))


DAMAGE = {
  "truncated": (_truncate, "bytes, not"),
  "garbled": (_garble, "garbled"),
  "missing file": (_delete_file, "is missing"),
  "uncommitted": (_uncommit, "never committed"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_newest_falls_back_to_intact(tmp_path, kind, caplog):
  damage, reason = DAMAGE[kind]
  path = str(tmp_path / "ckpt")
  _save_sync(path, [10, 20])
  damage(os.path.join(path, "20"))

  # A reader skips the damaged step and leaves it where it is.
  reader = checkpoint.Checkpointer(path, read_only=True)
  assert reason in reader.verify(20)
  assert reader.verify(10) is None
  with caplog.at_level("WARNING"):
    restored, meta = reader.restore(jax.eval_shape(_make_state))
  reader.close()
  assert meta["step"] == 10
  chex.assert_trees_all_equal(restored, _make_state(), strict=True)
  assert any("step 20" in r.getMessage() for r in caplog.records)
  assert os.path.isdir(os.path.join(path, "20"))

  # A writer moves it aside (never deletes it) and saves step 20 again.
  writer = checkpoint.Checkpointer(path, save_interval_steps=1)
  writer.restore(jax.eval_shape(_make_state))
  assert writer.all_steps() == [10]
  assert os.listdir(path + ".damaged") == ["20"]
  assert writer.save(20, _make_state(), metadata={**_META, "step": 20})
  writer.close()
  assert checkpoint.Checkpointer(path, read_only=True).verify(20) is None


def test_unsealed_damaged_checkpoint_is_detected_by_reading(tmp_path):
  """A run killed between committing a save and writing its digests."""
  path = str(tmp_path / "ckpt")
  _save_sync(path, [10, 20])
  os.remove(os.path.join(path, "20", checkpoint.DIGESTS))
  _truncate(os.path.join(path, "20"))
  ckpt = checkpoint.Checkpointer(path, read_only=True)
  assert ckpt.verify(20) is None  # Nothing to compare with...
  _, meta = ckpt.restore(jax.eval_shape(_make_state))
  assert meta["step"] == 10  # ...but reading it fails, so step 10 is used.
  ckpt.close()


def test_no_intact_checkpoint_is_one_error(tmp_path):
  path = str(tmp_path / "ckpt")
  _save_sync(path, [10, 20])
  _garble(os.path.join(path, "10"))
  _delete_file(os.path.join(path, "20"))
  ckpt = checkpoint.Checkpointer(path)
  with pytest.raises(errors.CheckpointError) as info:
    ckpt.restore(jax.eval_shape(_make_state))
  message = str(info.value)
  assert "\n" not in message
  assert path in message and "step 10" in message and "step 20" in message
  assert "Nothing was deleted" in message
  ckpt.close()
  assert sorted(os.listdir(path)) == ["10", "20"]


def test_an_explicit_damaged_step_does_not_fall_back(tmp_path):
  path = str(tmp_path / "ckpt")
  _save_sync(path, [10, 20])
  _garble(os.path.join(path, "10"))
  ckpt = checkpoint.Checkpointer(path, read_only=True)
  with pytest.raises(errors.CheckpointError, match="step 10"):
    ckpt.restore(jax.eval_shape(_make_state), step=10)
  ckpt.close()


def test_full_disk_keeps_the_previous_checkpoint(tmp_path):
  """A save that the OS refuses (a file-size limit stands in for a full
  disk) is one error, and the previous checkpoint stays intact."""
  path = str(tmp_path / "ckpt")
  script = textwrap.dedent(f"""
      import resource
      import numpy as np
      from dblocks_jax.training import checkpoint
      from dblocks_jax import errors

      ckpt = checkpoint.Checkpointer({path!r}, save_interval_steps=1)
      ckpt.save(1, {{"w": np.zeros(10, np.float32)}}, metadata={{}})
      ckpt.wait_until_finished()
      # From now on no file may grow past 64 KiB: the next save fails.
      resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
      try:
        w = np.random.default_rng(0).random(1 << 20, np.float32)
        ckpt.save(2, {{"w": w}}, metadata={{}})
        ckpt.close()
      except errors.CheckpointError as e:
        print("error:", e)
  """)
  env = dict(os.environ, PYTHONPATH=_REPO_ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr.decode()[-2000:]
  line = proc.stdout.decode().strip().splitlines()[-1]
  assert line.startswith("error: writing the checkpoint of step 2"), line
  assert "the checkpoint of step 1 is intact" in line
  ckpt = checkpoint.Checkpointer(path)
  assert ckpt.all_steps() == [1]
  assert ckpt.verify(1) is None
  restored, _ = ckpt.restore({"w": np.zeros(10, np.float32)})
  np.testing.assert_array_equal(restored["w"], np.zeros(10, np.float32))
  ckpt.close()
