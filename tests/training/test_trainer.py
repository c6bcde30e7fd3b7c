"""The trainer's parts, each on its own: the schedule's order, placement and
offload, saving and restoring, and the stop on signals.

The trainer at a user's edges (bad batches, inference without the
optimizer, per-block optimizers) is in test_trainer_edges.py.
"""

import os
import signal

import chex
import jax
import numpy as np
import pytest
from conftest import snapshot

from dblocks_jax import families
from dblocks_jax.blockwise.layout import Layout
from dblocks_jax.blockwise.schedule import BlockSchedule
from dblocks_jax.errors import Preempted
from dblocks_jax.families import common
from dblocks_jax.training import placement as placement_lib
from dblocks_jax.training.preemption import StopSignals
from dblocks_jax.training.schedule import RunSchedule, crossed

# ----- The schedule -----------------------------------------------------------


def test_the_schedule_answers_each_step_once_and_the_same_in_any_order():
  layout = Layout.create(4, num_devices=1)
  schedule = RunSchedule("uniform", layout, seed=3)
  forward = [schedule.blocks_at(s)[0] for s in range(2500)]
  backward = [schedule.blocks_at(s)[0] for s in reversed(range(2500))]
  assert forward == backward[::-1]  # A lookup: no state consumed.
  # The paper's draw: a uniformly random block per step, from the seed.
  np.testing.assert_array_equal(
    forward, BlockSchedule("uniform", range(4), seed=3)(0, 2500)
  )
  assert sorted(set(forward)) == [0, 1, 2, 3]
  assert np.bincount(forward).min() > 550  # About 625 each.


def test_groups_draw_their_own_blocks_and_updates_their_own_keys():
  layout = Layout.create(4, num_groups=2, num_devices=2)
  schedule = RunSchedule("round_robin", layout, seed=0)
  # Step s advances the count by G = 2: position s // 2.
  assert [schedule.blocks_at(s) for s in (0, 2, 4, 6)] == [
    [0, 2],
    [1, 3],
    [0, 2],
    [1, 3],
  ]
  assert schedule.per_block  # Blocks split over groups.
  key, at = schedule.update(block=3, step=6, updates=1)
  expected = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 3), 1)
  assert key.tolist() == jax.random.key_data(expected).tolist()  # Raw data.
  assert at == 1 * 4  # The learning rate of step n B.
  assert schedule.end_step(100) == 100  # 25 updates of each of 4 blocks.


def test_the_sequential_rule_keys_follow_the_global_step():
  layout = Layout.create(3, num_devices=1)
  schedule = RunSchedule("uniform", layout, seed=5, schedule_step="own")
  key, at = schedule.update(block=2, step=17, updates=4)
  expected = jax.random.fold_in(jax.random.key(5), 17)
  assert key.tolist() == jax.random.key_data(expected).tolist()
  # Keys come in chunks of 1,000 steps: across a chunk's edge too.
  for step in (999, 1000, 2500):
    key, _ = schedule.update(block=0, step=step, updates=0)
    expected = jax.random.fold_in(jax.random.key(5), step)
    assert key.tolist() == jax.random.key_data(expected).tolist()
  assert at is None  # "own": optax's own counts.
  assert RunSchedule("uniform", layout, 0, blockwise=False).blocks_at(9) == [0]


def test_boundaries_are_crossed_once_whatever_the_stride():
  hits = [d for d in range(4, 41, 4) if crossed(d, 10, stride=4)]
  assert hits == [12, 20, 32, 40]  # One step of 4 updates crosses 10 once.
  assert not any(crossed(d, 0) for d in range(1, 20))  # every=0: never.


# ----- Placement and offload ------------------------------------------------


def _trainer(config, workdir=None):
  family = families.get(config.model.name)
  return common.make_trainer(config, family.build(config), workdir)


def _batches(config, seed=0):
  rng = np.random.default_rng(seed)
  h, w, c = config.data.image_shape
  while True:
    yield {
      "image": rng.normal(size=(8, h, w, c)).astype(np.float32),
      "label": rng.integers(0, config.data.num_classes, 8).astype(np.int32),
    }


def test_offload_keeps_only_the_training_block_on_the_device(smoke_config):
  smoke_config.blocks.offload = True
  trainer = _trainer(smoke_config)
  placement = trainer.placement
  kinds = lambda b: {
    x.sharding.memory_kind
    for x in jax.tree.leaves(placement.state["blocks"][b])
  }
  assert all(kinds(b) == {"pinned_host"} for b in range(3))
  placement.activate(1)
  assert kinds(1) == {"device"} and kinds(0) == kinds(2) == {"pinned_host"}
  before = snapshot(placement.view())
  placement.activate(2)  # Block 1 back to the host, block 2 in.
  assert kinds(2) == {"device"} and kinds(1) == {"pinned_host"}
  chex.assert_trees_all_equal(snapshot(placement.view()), before)  # No value.
  assert placement_lib.host_memory_kind(jax.devices()[0]) == "pinned_host"
  trainer.close()


# ----- Save and restore -------------------------------------------------------


def test_a_restored_run_continues_as_if_never_stopped(smoke_config, tmp_path):
  """Six steps, saved at 3 and 6; a new trainer restores step 3 and its
  next three steps give the same state as the first run's."""
  smoke_config.checkpoint_every_steps = 3
  smoke_config.total_steps = 6
  first = _trainer(smoke_config, str(tmp_path / "run"))
  first.fit(_batches(smoke_config), quiet=True)
  finished = snapshot(first.state)
  assert first.checkpoints.latest() == 6
  first.close()

  second = _trainer(smoke_config, str(tmp_path / "run"))
  assert second.restore(step=3) == 3
  data = _batches(smoke_config)
  for _ in range(3):
    next(data)  # The batches the first run used before step 3.
  for _ in range(3):
    second.step(next(data))
  chex.assert_trees_all_equal(snapshot(second.state), finished)
  second.close()


# ----- Stop on signals --------------------------------------------------------


def test_stop_signals_are_recorded_and_a_second_interrupt_stops_at_once():
  with StopSignals() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signal_name == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_fit_stops_on_sigterm_with_a_checkpoint_and_resumes(
  smoke_config, tmp_path
):
  smoke_config.total_steps = 8
  smoke_config.checkpoint_every_steps = 100
  workdir = str(tmp_path / "run")

  def sigterm_at(batches, n):
    for i, batch in enumerate(batches):
      if i == n:
        os.kill(os.getpid(), signal.SIGTERM)  # During step n + 1.
      yield batch

  trainer = _trainer(smoke_config, workdir)
  with pytest.raises(Preempted) as info:
    trainer.fit(sigterm_at(_batches(smoke_config), 4), quiet=True)
  assert info.value.step == 5 and "SIGTERM" in str(info.value)
  assert trainer.checkpoints.latest() == 5  # Saved before raising.
  trainer.close()

  resumed = _trainer(smoke_config, workdir)
  data = _batches(smoke_config)
  for _ in range(5):
    next(data)  # A plain iterator's position is not checkpointed.
  resumed.fit(data, quiet=True)
  assert resumed.step_count == 8
  resumed.close()

  straight = _trainer(smoke_config, str(tmp_path / "straight"))
  straight.fit(_batches(smoke_config), quiet=True)
  chex.assert_trees_all_equal(
    snapshot(resumed.state["blocks"]), snapshot(straight.state["blocks"])
  )
  straight.close()
