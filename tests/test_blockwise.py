"""The block-wise engine: plan, schedule, per-block optimizer states, steps."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_equal, snapshot

from dblocks_jax import experiment, train
from dblocks_jax.blockwise import optim, schedule, steps
from dblocks_jax.blockwise import plan as plan_lib
from dblocks_jax.errors import ConfigError


def _batch(config, size=8, seed=0):
  h, w, c = config.data.image_shape
  rng = np.random.default_rng(seed)
  return {
    "image": jnp.asarray(rng.normal(size=(size, h, w, c)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, config.data.num_classes, size)),
  }


def _block_step(exp, graphdefs, config, block, tx, loss_wrapper=None):
  loss_fn = train.make_loss(exp, graphdefs, config, block)
  if loss_wrapper is not None:
    loss_fn = loss_wrapper(loss_fn)
  return train.make_train_step(exp, graphdefs, config, tx, block, loss_fn)


def _run(step_fn, state, block, batch, step):
  groups = steps.groups_for_block(state["shared"], state["blocks"][block])
  new, metrics = step_fn(
    groups, state["fixed"], batch, jax.random.key(step), step, block
  )
  if "shared" in new:
    state["shared"] = new["shared"]
  state["blocks"][block] = new["block"]
  return metrics


# ----- Plan -----------------------------------------------------------------


def test_equal_split_and_ranges(smoke_config):
  plan = plan_lib.from_config(smoke_config)
  assert plan.layers_per_block == (1, 1, 1)
  assert [plan.layer_range(b) for b in range(3)] == [(0, 1), (1, 2), (2, 3)]
  # Block 0 owns the highest noise: its range ends at sigma_max.
  assert plan.train_ranges[0, 1] == pytest.approx(80.0)
  assert plan.train_ranges[-1, 0] == pytest.approx(0.002)
  assert plan.route(79.0) == 0 and plan.route(0.003) == 2


@pytest.mark.parametrize(
  ("layers", "blocks", "dist", "field"),
  [
    (3, 4, (), "blocks.num_blocks=4 is larger than model.num_layers=3"),
    (6, 3, (1, 2, 2), "sums to 5"),
    (6, 3, (3, 3), "has 2 entries"),
    (7, 3, (), "does not split evenly"),
    (6, 3, (0, 3, 3), "counts must be >= 1"),
  ],
)
def test_bad_layer_distribution(layers, blocks, dist, field):
  with pytest.raises(ConfigError, match=field):
    plan_lib.layer_distribution(layers, blocks, dist)


def test_uneven_distribution_is_accepted():
  assert plan_lib.layer_distribution(12, 3, (2, 4, 6)) == (2, 4, 6)


# ----- Schedule ---------------------------------------------------------------


def test_uniform_schedule_is_a_function_of_seed_and_step():
  sched = schedule.BlockSchedule("uniform", 3, seed=7)
  whole = sched(0, 3000)
  np.testing.assert_array_equal(
    whole, np.concatenate([sched(0, 1234), sched(1234, 1766)])
  )
  np.testing.assert_array_equal(
    whole, schedule.BlockSchedule("uniform", 3, seed=7)(0, 3000)
  )
  assert not np.array_equal(
    whole, schedule.BlockSchedule("uniform", 3, seed=8)(0, 3000)
  )
  counts = np.bincount(whole, minlength=3) / len(whole)
  np.testing.assert_allclose(counts, 1 / 3, atol=0.03)


def test_round_robin_and_subset():
  rr = schedule.BlockSchedule("round_robin", 3)
  np.testing.assert_array_equal(rr(4, 5), [1, 2, 0, 1, 2])
  only = schedule.BlockSchedule("uniform", 3, train_blocks=(1,))
  assert set(only(0, 200).tolist()) == {1}
  two = schedule.BlockSchedule("uniform", 4, train_blocks=(3, 0))
  assert set(two(0, 400).tolist()) == {0, 3}


@pytest.mark.parametrize("train", [(3,), (1, 1), (-1,)])
def test_bad_subset(train):
  with pytest.raises(ConfigError, match="blocks.train"):
    schedule.BlockSchedule("uniform", 3, train_blocks=train)


# ----- Steps ------------------------------------------------------------------


@pytest.mark.parametrize("sharing", ["shared", "independent"])
def test_step_changes_only_the_active_block(smoke_config, sharing):
  smoke_config.blocks.sharing = sharing
  exp = experiment.build(smoke_config)
  tx = optim.make_optimizer(smoke_config.optimizer)
  graphdefs, state = train.init_state(exp, tx)
  step_fn = _block_step(exp, graphdefs, smoke_config, 1, tx)
  before = snapshot(state)
  _run(step_fn, state, 1, _batch(smoke_config), 5)

  for b in (0, 2):  # Params AND optimizer state, bit for bit.
    assert_trees_equal(state["blocks"][b], before["blocks"][b])
  assert_trees_equal(state["fixed"], before["fixed"])
  changed = jax.tree.leaves(
    jax.tree.map(
      lambda x, y: bool(np.any(np.asarray(x) != y)),
      state["blocks"][1]["params"],
      before["blocks"][1]["params"],
    )
  )
  assert any(changed)
  count = lambda g: int(g["opt_state"].inner_state[0].count)
  assert [count(b) for b in state["blocks"]] == [0, 1, 0]
  if sharing == "shared":
    assert count(state["shared"]) == 1
  else:
    assert state["shared"] == {} and "targets" in state["fixed"]


def test_per_block_adam_counts_follow_the_blocks_trained(smoke_config):
  exp = experiment.build(smoke_config)
  tx = optim.make_optimizer(smoke_config.optimizer)
  graphdefs, state = train.init_state(exp, tx)
  step_fn = _block_step(exp, graphdefs, smoke_config, 0, tx)
  for i, b in enumerate([0, 0, 2, 0]):
    _run(step_fn, state, b, _batch(smoke_config, seed=i), i)
  counts = [int(b["opt_state"].inner_state[0].count) for b in state["blocks"]]
  assert counts == [3, 0, 1]
  assert int(state["shared"]["opt_state"].inner_state[0].count) == 4


def test_one_compile_serves_every_equal_block(smoke_config):
  exp = experiment.build(smoke_config)
  tx = optim.make_optimizer(smoke_config.optimizer)
  graphdefs, state = train.init_state(exp, tx)
  assert graphdefs.block_key(0) == graphdefs.block_key(2)
  traced = lambda f: chex.assert_max_traces(f, n=1)
  step_fn = _block_step(exp, graphdefs, smoke_config, 0, tx, traced)
  for i, b in enumerate([0, 1, 2, 1, 0]):
    metrics = _run(step_fn, state, b, _batch(smoke_config, seed=i), i)
    assert np.isfinite(float(metrics["loss"]))
  assert step_fn._cache_size() == 1


def test_uneven_blocks_compile_once_per_shape(smoke_config):
  smoke_config.model.num_layers = 4
  smoke_config.blocks.num_blocks = 3
  smoke_config.blocks.layer_distribution = (1, 2, 1)
  exp = experiment.build(smoke_config)
  tx = optim.make_optimizer(smoke_config.optimizer)
  graphdefs, state = train.init_state(exp, tx)
  assert graphdefs.block_key(0) == graphdefs.block_key(2)
  assert graphdefs.block_key(0) != graphdefs.block_key(1)
  one = _block_step(exp, graphdefs, smoke_config, 0, tx)
  two = _block_step(exp, graphdefs, smoke_config, 1, tx)
  for i, b in enumerate([0, 1, 2, 1]):
    _run(two if b == 1 else one, state, b, _batch(smoke_config, seed=i), i)
  assert one._cache_size() == 1 and two._cache_size() == 1
  assert len(jax.tree.leaves(state["blocks"][1]["params"])) > len(
    jax.tree.leaves(state["blocks"][0]["params"])
  )


def test_block_loss_ignores_other_blocks_weights(smoke_config):
  """Block b's loss and sampler output do not read other blocks' weights."""
  from dblocks_jax import evaluate

  exp = experiment.build(smoke_config)
  tx = optim.make_optimizer(smoke_config.optimizer)
  graphdefs, state = train.init_state(exp, tx)
  # Train a little so no output is trivially zero.
  step_fn = _block_step(exp, graphdefs, smoke_config, 0, tx)
  for i in range(6):
    _run(step_fn, state, i % 3, _batch(smoke_config, seed=i), i)

  smoke_config.sampler.num_steps = 1  # Only sigma_min: routed to block 2.
  classify = evaluate.make_classify_fn(exp, graphdefs, smoke_config)
  images = _batch(smoke_config)["image"]
  reference = np.asarray(classify(state, images, jax.random.key(0)))
  scrambled = dict(state, blocks=list(state["blocks"]))
  for b in (0, 1):
    scrambled["blocks"][b] = jax.tree.map(lambda x: x + 1.0, state["blocks"][b])
  np.testing.assert_array_equal(
    np.asarray(classify(scrambled, images, jax.random.key(0))), reference
  )
  scrambled["blocks"][2] = jax.tree.map(lambda x: x + 1.0, state["blocks"][2])
  assert not np.array_equal(
    np.asarray(classify(scrambled, images, jax.random.key(0))), reference
  )


def _quadratic_step(accumulation, clip_norm):
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)

  def loss_fn(params, fixed, batch, key, block):
    del fixed, key, block
    err = params["g"]["w"][None] - batch["x"]
    return jnp.mean(jnp.sum(err**2, -1)), {}

  step = steps.build_train_step(
    loss_fn,
    tx,
    lambda s: 0.1 * (s + 1),
    clip_norm=clip_norm,
    accumulation_steps=accumulation,
    donate=False,
  )
  params = {"w": jnp.zeros(3)}
  groups = {"g": {"params": params, "opt_state": tx.init(params)}}
  return step, groups


def test_accumulation_averages_micro_batch_gradients():
  x = jnp.arange(12.0).reshape(4, 3)
  batch = {"x": x}
  full, groups = _quadratic_step(1, 0.0)
  accum, _ = _quadratic_step(2, 0.0)
  new_full, m_full = full(groups, {}, batch, jax.random.key(0), 0, 0)
  new_acc, m_acc = accum(groups, {}, batch, jax.random.key(0), 0, 0)
  np.testing.assert_allclose(
    new_acc["g"]["params"]["w"], new_full["g"]["params"]["w"], rtol=1e-6
  )
  # grad of mean ||w - x||^2 at w=0 is -2 mean(x); lr(step 0) = 0.1.
  np.testing.assert_allclose(
    new_full["g"]["params"]["w"], 0.1 * 2 * x.mean(0), rtol=1e-6
  )
  assert float(m_acc["learning_rate"]) == pytest.approx(0.1)


def test_clipping_uses_the_global_norm_and_the_global_step():
  x = jnp.full((2, 3), 10.0)
  step, groups = _quadratic_step(1, 1.0)
  new, metrics = step(groups, {}, {"x": x}, jax.random.key(0), 4, 0)
  assert float(metrics["grad_norm"]) == pytest.approx(20 * np.sqrt(3), 1e-5)
  # Clipped to norm ~1, learning rate 0.1 * (4 + 1) = 0.5 -> |update| = 0.5.
  norm = float(jnp.linalg.norm(new["g"]["params"]["w"]))
  assert norm == pytest.approx(0.5, rel=1e-4)


class _SigmaSpy:
  """An objective that records the sigmas a block loss draws."""

  def __init__(self):
    self.sigmas = []

  def loss(self, parts, batch, sigma, key, *, train=True):
    self.sigmas.append(sigma)
    return jnp.zeros(()), {}


@pytest.mark.parametrize("sampling", ["lognormal", "log_uniform"])
def test_block_loss_draws_sigma_in_the_block_range(smoke_config, sampling):
  exp = experiment.build(smoke_config)
  graphdefs, state = train.init_state(
    exp, optim.make_optimizer(smoke_config.optimizer)
  )
  spy = _SigmaSpy()
  loss_fn = steps.make_block_loss(
    spy,
    graphdefs,
    graphdefs.blocks[0],
    exp.plan.train_ranges,
    p_mean=-1.2,
    p_std=1.2,
    sigma_sampling=sampling,
  )
  params = {
    "shared": state["shared"]["params"],
    "block": state["blocks"][0]["params"],
  }
  batch = {"label": jnp.zeros(20_000, jnp.int32)}
  loss_fn(params, {}, batch, jax.random.key(0), 0)
  sigma = np.asarray(spy.sigmas[0])
  lo, hi = exp.plan.train_ranges[0]
  assert sigma.min() >= np.float32(lo) and sigma.max() <= np.float32(hi)
  # Block 0's range [0.39, 80]: the log-normal puts ~2% above sigma = 5,
  # log-uniform sampling about half.
  expected = (
    0.023 if sampling == "lognormal" else np.log(hi / 5) / np.log(hi / lo)
  )
  assert np.mean(sigma > 5.0) == pytest.approx(expected, abs=0.01)


def test_unknown_sigma_sampling_is_refused(smoke_config):
  exp = experiment.build(smoke_config)
  graphdefs, _ = train.init_state(
    exp, optim.make_optimizer(smoke_config.optimizer)
  )
  with pytest.raises(ConfigError, match="blocks.sigma_sampling='uniform'"):
    steps.make_block_loss(
      _SigmaSpy(),
      graphdefs,
      graphdefs.blocks[0],
      exp.plan.train_ranges,
      p_mean=-1.2,
      p_std=1.2,
      sigma_sampling="uniform",
    )
