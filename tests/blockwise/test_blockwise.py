"""The block-wise engine: plan, schedule, per-block optimizer states, steps,
non-parameter state and routed inference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import snapshot
from flax import nnx

from dblocks_jax import families, nn
from dblocks_jax.blockwise import inference, parts, schedule, steps
from dblocks_jax.blockwise.plan import BlockPlan, check_ranges
from dblocks_jax.diffusion import EDM
from dblocks_jax.errors import ConfigError
from dblocks_jax.tasks import Sampler


def _batch(config, size=8, seed=0):
  h, w, c = config.data.image_shape
  rng = np.random.default_rng(seed)
  return {
    "image": jnp.asarray(rng.normal(size=(size, h, w, c)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, config.data.num_classes, size)),
  }


class _Engine:
  """A config's model split into groups, with one optimizer state each, and
  the library's step set-up (`steps.make_step`, no trainer)."""

  def __init__(self, config, tx=None, accumulation_steps=1):
    self.exp = families.get(config.model.name).build(config)
    self.defs, shared, blocks, self.fixed = parts.split(self.exp.model)
    self.tx = tx or optax.adamw(1e-3)
    group = lambda a: steps.group_state(a, self.tx)
    self.shared = group(shared) if jax.tree.leaves(shared["params"]) else {}
    self.blocks = [group(b) for b in blocks]
    self.accumulation_steps = accumulation_steps
    self.fns = {}

  def loss_fn(self, block, task=None):
    return steps.loss_of(task or self.exp.task, self.defs, self.exp.plan, block)

  def step_fn(self, block):
    key = self.defs.block_key(block)
    if key not in self.fns:
      self.fns[key] = steps.make_step(
        self.exp.task,
        self.defs,
        self.exp.plan,
        block,
        self.tx,
        clip_norm=1.0,
        accumulation_steps=self.accumulation_steps,
      )
    return self.fns[key]

  def run(self, block, batch, step):
    new_block, new_shared, metrics = self.step_fn(block)(
      self.blocks[block],
      self.shared,
      self.fixed,
      batch,
      jax.random.key(step),
      block,
      step,
    )
    self.blocks[block] = new_block
    if self.shared:
      self.shared = new_shared
    return metrics


# ----- Plan ---------------------------------------------------------------


def test_plan_is_in_block_order(smoke_config):
  from dblocks_jax.families import common

  plan = common.plan_from_config(smoke_config)
  assert plan.layers_per_block == (1, 1, 1)
  # Block 0 owns the noisiest range: boundaries descend from sigma_max.
  np.testing.assert_allclose(
    plan.boundaries, [80.0, 0.5050, 0.1796, 0.002], rtol=1e-3
  )
  assert plan.train_ranges[0, 1] == pytest.approx(80.0)
  assert plan.train_ranges[-1, 0] == pytest.approx(0.002)
  # method_spec 1.5 (B=3, gamma 0.05), reversed into block order.
  np.testing.assert_allclose(
    plan.train_ranges,
    [[0.3920, 80.0], [0.1706, 0.5318], [0.002, 0.2249]],
    rtol=1e-3,
  )
  assert plan.route(79.0) == 0 and plan.route(0.003) == 2
  levels, blocks = plan.grid(3)
  assert list(blocks) == [0, 1, 2] and levels[0] == pytest.approx(80.0)


@pytest.mark.parametrize(
  ("layers", "blocks", "dist", "message"),
  [
    (3, 4, (), "num_blocks=4 is larger than num_layers=3"),
    (6, 3, (1, 2, 2), "sums to 5"),
    (6, 3, (3, 3), "has 2 entries"),
    (7, 3, (), "does not split evenly"),
    (6, 3, (0, 3, 3), "counts must be >= 1"),
  ],
)
def test_bad_layer_distribution(layers, blocks, dist, message):
  with pytest.raises(ValueError, match=message):
    BlockPlan.create(
      EDM(), num_layers=layers, num_blocks=blocks, layer_distribution=dist
    )


def test_uneven_distribution_is_accepted():
  plan = BlockPlan.create(
    EDM(), num_layers=12, num_blocks=3, layer_distribution=(2, 4, 6)
  )
  assert plan.layers_per_block == (2, 4, 6)


def test_explicit_boundaries_are_in_block_order():
  plan = BlockPlan.create(
    EDM(),
    num_layers=3,
    num_blocks=3,
    gamma=0.0,
    partition="explicit",
    boundaries=(80.0, 2.0, 0.2, 0.002),
  )
  np.testing.assert_allclose(plan.train_ranges[0], [2.0, 80.0])
  with pytest.raises(ValueError, match=r"ascend.*block order"):
    BlockPlan.create(
      EDM(),
      num_layers=3,
      num_blocks=3,
      partition="explicit",
      boundaries=(0.002, 0.2, 2.0, 80.0),
    )


def test_ranges_in_the_wrong_order_or_shape_are_refused():
  plan = BlockPlan.create(EDM(), num_layers=3, num_blocks=3)
  check_ranges(plan.train_ranges, 3)
  with pytest.raises(ValueError, match="not in block order"):
    check_ranges(plan.train_ranges[::-1], 3)
  with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
    check_ranges(plan.train_ranges[:2], 3)
  with pytest.raises(ValueError, match="lo >= hi"):
    check_ranges(plan.train_ranges[:, ::-1], 3)


def test_a_wide_lowest_range_widened_past_its_neighbour_is_in_order():
  # A narrow log-normal puts a wide range at the bottom: widened by gamma,
  # it reaches above the upper end of the range before it.
  plan = BlockPlan.create(
    EDM(p_mean=-0.7, p_std=0.5), num_layers=4, num_blocks=4, gamma=0.1
  )
  upper = plan.train_ranges[:, 1]
  assert upper[3] > upper[2]
  np.testing.assert_array_equal(
    check_ranges(plan.train_ranges, 4), plan.train_ranges
  )


def test_plan_needs_a_noise_process():
  with pytest.raises(TypeError, match="not a noise process"):
    BlockPlan.create("edm", num_layers=3, num_blocks=3)


# ----- Schedule -------------------------------------------------------------


def test_uniform_schedule_is_a_function_of_seed_and_step():
  sched = schedule.BlockSchedule("uniform", range(3), seed=7)
  whole = sched(0, 3000)
  np.testing.assert_array_equal(
    whole, np.concatenate([sched(0, 1234), sched(1234, 1766)])
  )
  np.testing.assert_array_equal(
    whole, schedule.BlockSchedule("uniform", range(3), seed=7)(0, 3000)
  )
  assert not np.array_equal(
    whole, schedule.BlockSchedule("uniform", range(3), seed=8)(0, 3000)
  )
  counts = np.bincount(whole, minlength=3) / len(whole)
  np.testing.assert_allclose(counts, 1 / 3, atol=0.03)


def test_round_robin_and_subset():
  rr = schedule.BlockSchedule("round_robin", range(3))
  np.testing.assert_array_equal(rr(4, 5), [1, 2, 0, 1, 2])
  only = schedule.BlockSchedule("uniform", (1,))
  assert set(only(0, 200).tolist()) == {1}
  two = schedule.BlockSchedule("uniform", (3, 0))
  assert set(two(0, 400).tolist()) == {0, 3}


@pytest.mark.parametrize(
  ("kind", "blocks", "message"),
  [("random", (0,), "schedule='random'"), ("uniform", (1, 1), "distinct")],
)
def test_bad_schedule(kind, blocks, message):
  with pytest.raises(ValueError, match=message):
    schedule.BlockSchedule(kind, blocks)


# ----- Steps ------------------------------------------------------------------


@pytest.mark.parametrize("sharing", ["shared", "independent"])
def test_step_changes_only_the_active_block(smoke_config, sharing):
  smoke_config.blocks.sharing = sharing
  engine = _Engine(smoke_config)
  before = snapshot([engine.blocks, engine.fixed])
  engine.run(1, _batch(smoke_config), 5)
  for b in (0, 2):  # Params AND optimizer state, bit for bit.
    chex.assert_trees_all_equal(engine.blocks[b], before[0][b], strict=True)
  chex.assert_trees_all_equal(engine.fixed, before[1], strict=True)
  changed = jax.tree.leaves(
    jax.tree.map(
      lambda x, y: bool(np.any(np.asarray(x) != y)),
      engine.blocks[1]["params"],
      before[0][1]["params"],
    )
  )
  assert any(changed)
  count = lambda g: int(g["opt_state"][0].count)  # Adam's own count.
  assert [count(b) for b in engine.blocks] == [0, 1, 0]
  if sharing == "shared":
    assert count(engine.shared) == 1
  else:
    assert (
      engine.shared == {}
      and "targets" in engine.fixed["params"] | (engine.fixed["rest"])
    )


def test_per_block_adam_counts_follow_the_blocks_trained(smoke_config):
  engine = _Engine(smoke_config)
  for i, b in enumerate([0, 0, 2, 0]):
    engine.run(b, _batch(smoke_config, seed=i), i)
  counts = [int(b["opt_state"][0].count) for b in engine.blocks]
  assert counts == [3, 0, 1]
  assert int(engine.shared["opt_state"][0].count) == 4


def test_schedules_follow_the_global_step():
  """A group first updated at global step 20 uses the rate of step 20 (the
  official rule) though its optimizer state has seen no update; with
  schedule_step=None optax's own count (0) gives the rate of step 0."""
  late = lambda s: jnp.where(s >= 10, 0.1, 0.0)
  for schedule_step, expected_rate in ((20, 0.1), (None, 0.0)):
    step, shared = _quadratic_step(1, 0.0, tx=optax.adam(late))
    x = jnp.ones((2, 3))
    _, new, _ = step(
      {}, shared, {}, {"x": x}, jax.random.key(0), 0, schedule_step
    )
    # Adam's first update is lr * sign(grad) (grad < 0 here).
    np.testing.assert_allclose(new["params"]["w"], expected_rate, atol=1e-6)
    adam_count = int(new["opt_state"][0].count)
    assert adam_count == 1  # The moments count the group's own updates.


def test_an_optax_chain_is_applied_at_the_global_step(smoke_config):
  """Any optax chain is an optimizer, its schedule read at the global step
  (not its own count): Adam's first update is lr(step) * sign(grad)."""
  schedule = optax.cosine_decay_schedule(1e-3, 100)
  tx = optax.chain(
    optax.clip_by_global_norm(0.5),
    optax.scale_by_adam(),
    optax.scale_by_learning_rate(schedule),
  )
  engine = _Engine(smoke_config, tx=tx)
  groups = {"shared": engine.shared, "block": engine.blocks[0]}
  groups = {name: g for name, g in groups.items() if g}
  params = jax.device_get({n: g["params"] for n, g in groups.items()})
  rest = {n: g["rest"] for n, g in groups.items()}
  batch, step = _batch(smoke_config), 70

  def loss(params):
    key = jax.random.key(step)  # The key `run` gives the step.
    return engine.loss_fn(0)(params, rest, engine.fixed, batch, key, 0)[0]

  grads = jax.grad(loss)(params)
  engine.run(0, batch, step)
  new = {"block": engine.blocks[0]["params"]}
  if "shared" in groups:
    new["shared"] = engine.shared["params"]
  steps_taken, grads, before = (
    np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
    for t in (new, grads, params)
  )
  moved = np.abs(grads) > 1e-3 * np.abs(grads).max()
  assert moved.sum() > 100
  expected = -float(schedule(step)) * np.sign(grads[moved])
  np.testing.assert_allclose(
    (steps_taken - before)[moved], expected, rtol=1e-2, atol=1e-7
  )
  assert float(schedule(step)) < 0.5 * float(schedule(0))  # Not count 0.


def test_one_compile_serves_every_equal_block(smoke_config):
  engine = _Engine(smoke_config)
  assert engine.defs.block_key(0) == engine.defs.block_key(2)
  for i, b in enumerate([0, 1, 2, 1, 0]):
    metrics = engine.run(b, _batch(smoke_config, seed=i), i)
    assert np.isfinite(float(metrics["loss"]))
  assert len(engine.fns) == 1
  assert next(iter(engine.fns.values()))._cache_size() == 1


def test_uneven_blocks_compile_once_per_shape(smoke_config):
  smoke_config.model.num_layers = 4
  smoke_config.blocks.layer_distribution = (1, 2, 1)
  engine = _Engine(smoke_config)
  assert engine.defs.block_key(0) == engine.defs.block_key(2)
  assert engine.defs.block_key(0) != engine.defs.block_key(1)
  for i, b in enumerate([0, 1, 2, 1]):
    engine.run(b, _batch(smoke_config, seed=i), i)
  assert len(engine.fns) == 2
  assert all(fn._cache_size() == 1 for fn in engine.fns.values())
  assert len(jax.tree.leaves(engine.blocks[1]["params"])) > len(
    jax.tree.leaves(engine.blocks[0]["params"])
  )


def test_routed_inference_reads_only_the_routed_block(smoke_config):
  """With one grid point (sigma_max, routed to block 0), scrambling blocks 1
  and 2 changes nothing; scrambling block 0 does."""
  engine = _Engine(smoke_config)
  for i in range(6):  # Train a little so no output is trivially zero.
    engine.run(i % 3, _batch(smoke_config, seed=i), i)
  sampler = Sampler.of(engine.exp.plan, num_steps=1)
  assert list(sampler.blocks) == [0]
  predict = inference.make_predict(engine.exp.task, engine.defs, sampler)
  state = {"shared": engine.shared, "blocks": engine.blocks, "fixed": {}}
  arrays = inference.inference_arrays(dict(state, fixed=engine.fixed))
  batch = {"image": _batch(smoke_config)["image"]}
  reference = np.asarray(predict(arrays, batch, jax.random.key(0)))
  plus_one = lambda tree: jax.tree.map(lambda x: x + 1.0, tree)
  scrambled = dict(arrays, blocks=list(arrays["blocks"]))
  for b in (1, 2):
    scrambled["blocks"][b] = plus_one(arrays["blocks"][b])
  np.testing.assert_array_equal(
    np.asarray(predict(scrambled, batch, jax.random.key(0))), reference
  )
  scrambled["blocks"][0] = plus_one(arrays["blocks"][0])
  assert not np.array_equal(
    np.asarray(predict(scrambled, batch, jax.random.key(0))), reference
  )


# ----- Gradients: accumulation and clipping ----------------------------------


def _quadratic_step(accumulation, clip_norm, tx=None):
  tx = tx or optax.sgd(lambda s: 0.1 * (s + 1))

  def loss_fn(params, rest, fixed, batch, key, block):
    del fixed, key, block
    err = params["shared"]["w"][None] - batch["x"]
    return jnp.mean(jnp.sum(err**2, -1)), ({}, rest)

  step = steps.build_train_step(
    loss_fn,
    tx,
    clip_norm=clip_norm,
    accumulation_steps=accumulation,
    learning_rate_fn=lambda s: 0.1 * (s + 1),
    donate=False,
  )
  params = {"w": jnp.zeros(3)}
  shared = {"params": params, "opt_state": tx.init(params), "rest": {}}
  return step, shared


def test_accumulation_averages_micro_batch_gradients():
  x = jnp.arange(12.0).reshape(4, 3)
  batch = {"x": x}
  full, shared = _quadratic_step(1, 0.0)
  accum, _ = _quadratic_step(2, 0.0)
  _, new_full, m_full = full({}, shared, {}, batch, jax.random.key(0), 0, 0)
  _, new_acc, m_acc = accum({}, shared, {}, batch, jax.random.key(0), 0, 0)
  np.testing.assert_allclose(
    new_acc["params"]["w"], new_full["params"]["w"], rtol=1e-6
  )
  # grad of mean ||w - x||^2 at w=0 is -2 mean(x); lr(step 0) = 0.1.
  np.testing.assert_allclose(
    new_full["params"]["w"], 0.1 * 2 * x.mean(0), rtol=1e-6
  )
  assert float(m_acc["learning_rate"]) == pytest.approx(0.1)


def test_clipping_uses_the_global_norm_and_the_global_step():
  x = jnp.full((2, 3), 10.0)
  step, shared = _quadratic_step(1, 1.0)
  _, new, metrics = step({}, shared, {}, {"x": x}, jax.random.key(0), 4, 4)
  assert float(metrics["grad_norm"]) == pytest.approx(20 * np.sqrt(3), 1e-5)
  # Clipped to norm ~1, learning rate 0.1 * (4 + 1) = 0.5 -> |update| = 0.5.
  norm = float(jnp.linalg.norm(new["params"]["w"]))
  assert norm == pytest.approx(0.5, rel=1e-4)


# ----- Noise levels ---------------------------------------------------------


class _LevelSpy:
  """A task that records the levels a block loss draws."""

  def __init__(self):
    self.levels = []

  def loss(self, parts, batch, level, key, *, train=True):
    self.levels.append(level)
    return jnp.zeros(()), {}

  def predict(self, parts_for_block, batch, key, *, sampler):
    raise NotImplementedError


@pytest.mark.parametrize("sampling", ["lognormal", "log_uniform"])
def test_block_loss_draws_levels_in_the_block_range(smoke_config, sampling):
  smoke_config.blocks.sigma_sampling = sampling
  engine = _Engine(smoke_config)
  spy = _LevelSpy()
  loss_fn = engine.loss_fn(0, task=spy)
  params = {
    "shared": engine.shared["params"],
    "block": engine.blocks[0]["params"],
  }
  rest = {"shared": engine.shared["rest"], "block": engine.blocks[0]["rest"]}
  batch = {"label": jnp.zeros(20_000, jnp.int32)}
  loss_fn(params, rest, engine.fixed, batch, jax.random.key(0), 0)
  sigma = np.asarray(spy.levels[0])
  lo, hi = engine.exp.plan.train_ranges[0]
  assert sigma.min() >= np.float32(lo) and sigma.max() <= np.float32(hi)
  # Block 0's range [0.39, 80]: the log-normal puts ~2% above sigma = 5,
  # log-uniform sampling about half.
  expected = (
    0.023 if sampling == "lognormal" else np.log(hi / 5) / np.log(hi / lo)
  )
  assert np.mean(sigma > 5.0) == pytest.approx(expected, abs=0.01)


def test_unknown_sigma_sampling_is_refused(smoke_config):
  with pytest.raises(ValueError, match="sampling='uniform'"):
    EDM(sampling="uniform")
  smoke_config.blocks.sigma_sampling = "uniform"
  with pytest.raises(ConfigError, match="blocks.sigma_sampling='uniform'"):
    families.get("vit").build(smoke_config)


# ----- Non-parameter state: BatchNorm statistics, Dropout streams ------------


class _NormLayer(nnx.Module):
  """A residual layer with BatchNorm and its own Dropout stream."""

  def __init__(self, rngs):
    self.linear = nnx.Linear(4, 4, rngs=rngs)
    self.norm = nnx.BatchNorm(4, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, h, cond):
    return h + self.dropout(self.norm(self.linear(h)))


class _Identity(nnx.Module):
  def __call__(self, x, *args):
    return x


class _RegressTask:
  """Regress y from x through one block: parts stem, layers."""

  def loss(self, parts, batch, level, key, *, train=True):
    out = parts["layers"](parts["stem"](batch["x"]), None)
    return jnp.mean((out - batch["y"]) ** 2), {}

  def predict(self, parts_for_block, batch, key, *, sampler):
    parts = parts_for_block(0)
    return parts["layers"](parts["stem"](batch["x"]), None)


def test_batch_statistics_are_carried_and_dropout_is_seeded_per_step():
  plan = BlockPlan.create(EDM(), num_layers=2, num_blocks=1)
  model = parts.BlockwiseModel.build(
    plan, shell=lambda rngs: {"stem": _Identity()}, layer=_NormLayer
  )
  defs, shared, blocks, fixed = parts.split(model)
  tx = optax.sgd(0.0)  # Parameters stay put: only the statistics move.
  block = dict(blocks[0], opt_state=tx.init(blocks[0]["params"]))
  loss = steps.block_loss(
    _RegressTask(), defs, defs.blocks[0], plan.noise, plan.train_ranges
  )
  step = steps.build_train_step(loss, tx, donate=False)
  batch = {"x": 3.0 + jnp.ones((16, 4)), "y": jnp.zeros((16, 4))}
  shared_group = dict(shared, opt_state=tx.init(shared["params"]))
  new, _, m1 = step(block, shared_group, fixed, batch, jax.random.key(1), 0, 0)
  means = jax.tree.leaves(new["rest"])
  assert any(np.any(np.asarray(x) != 0) for x in means)  # Statistics moved.
  _, _, m2 = step(block, shared_group, fixed, batch, jax.random.key(1), 0, 0)
  _, _, m3 = step(block, shared_group, fixed, batch, jax.random.key(2), 0, 0)
  assert float(m1["loss"]) == float(m2["loss"])  # Same key, same dropout.
  assert float(m1["loss"]) != float(m3["loss"])  # Another step's key.
  # Inference runs in evaluation mode: running averages, no dropout.
  predict = inference.make_predict(_RegressTask(), defs)
  arrays = {"shared": shared, "blocks": [new], "fixed": fixed}
  out1 = predict(arrays, batch, jax.random.key(0))
  out2 = predict(arrays, batch, jax.random.key(9))
  np.testing.assert_array_equal(out1, out2)


def test_parts_that_are_not_modules_are_refused():
  plan = BlockPlan.create(EDM(), num_layers=2, num_blocks=2)
  with pytest.raises(TypeError, match="part 'stem' is .*not an nnx.Module"):
    parts.BlockwiseModel.build(
      plan, shell=lambda rngs: {"stem": jnp.tanh}, layer=_NormLayer
    )
  with pytest.raises(TypeError, match="not an nnx.Module"):
    parts.BlockwiseModel.build(
      plan,
      shell=lambda rngs: {"stem": _Identity()},
      layers=lambda n, rngs: [_NormLayer(rngs) for _ in range(n)],
    )
  with pytest.raises(ValueError, match="a stack of 3 layers"):
    parts.BlockwiseModel.build(
      plan,
      shell=lambda rngs: {"stem": _Identity()},
      layers=lambda n, rngs: nn.Stack([_NormLayer(rngs) for _ in range(3)]),
    )
  with pytest.raises(ValueError, match="sharing='both'"):
    parts.BlockwiseModel.build(
      plan, shell=lambda rngs: {}, layer=_NormLayer, sharing="both"
    )
