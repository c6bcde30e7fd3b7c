"""The recurrent-depth (Huginn-style) LM: tied weights, truncated
backpropagation, scanned iterations and cached decoding."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_params import randomize

from configs import huginn_pydocs
from dblocks_jax import families
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import common
from dblocks_jax.models import ar, recurrent
from dblocks_jax.tasks import autoregressive, recurrent_depth
from dblocks_jax.tasks.base import step_depth

LAYERS = ar.ARConfig(
  vocab_size=40,
  max_seq_len=16,
  num_layers=4,
  width=16,
  num_heads=2,
  mlp_dim=24,
  cond_dim=16,
  frequency_dim=16,
)
SPEC = recurrent.RecurrentConfig(
  LAYERS, prelude_layers=1, recurrent_layers=2, coda_layers=1
)


@pytest.fixture(scope="module")
def model():
  return recurrent.RecurrentLM(SPEC, rngs=nnx.Rngs(0))


def _tokens(shape, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, LAYERS.vocab_size)


def _params(module):
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_parameters_are_tied_across_iterations(model):
  assert _params(model) == recurrent.param_count(SPEC)
  tokens, key = _tokens((2, 8)), jax.random.key(1)
  depth_4 = jax.make_jaxpr(lambda t: model(t, key, depth=4))(tokens)
  depth_32 = jax.make_jaxpr(lambda t: model(t, key, depth=32))(tokens)
  # The same program: one scanned core, whatever the depth.
  count = lambda j: str(j).count("dot_general")  # noqa: E731
  assert count(depth_4) == count(depth_32)
  assert "scan" in str(depth_32)


def test_depth_changes_the_output_and_rows_are_causal(model):
  tokens, key = _tokens((2, 8)), jax.random.key(1)
  logits = model(tokens, key, depth=3)
  assert logits.shape == (2, 8, LAYERS.vocab_size)
  assert not np.allclose(logits, model(tokens, key, depth=4))
  changed = tokens.at[:, 5:].set((tokens[:, 5:] + 1) % LAYERS.vocab_size)
  np.testing.assert_allclose(
    model(changed, key, depth=3)[:, :5], logits[:, :5], atol=1e-6
  )


def test_truncated_backpropagation(model):
  tokens, key = _tokens((2, 8)), jax.random.key(1)
  graphdef, params = nnx.split(model)

  def loss(params, depth, backprop_depth):
    m = nnx.merge(graphdef, params)
    return jnp.mean(m(tokens, key, depth=depth, backprop_depth=backprop_depth))

  # Full backpropagation takes a Python depth; truncation a traced one.
  full = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))
  truncated = jax.jit(jax.value_and_grad(loss), static_argnums=2)
  for depth in (2, 6):
    (value, grads), (t_value, t_grads) = (
      full(params, depth, 0),
      truncated(params, jnp.int32(depth), 3),
    )
    # Same values whether or not the early iterations are tracked.
    np.testing.assert_allclose(t_value, value, rtol=1e-5)
    pairs = list(
      zip(jax.tree.leaves(grads), jax.tree.leaves(t_grads), strict=True)
    )
    if depth <= 3:  # Every iteration tracked, as without truncation.
      for a, b in pairs:
        np.testing.assert_allclose(a, b, atol=1e-7)
    else:  # The first 3 of 6 iterations carry no gradient.
      assert any(not np.allclose(a, b, atol=1e-7) for a, b in pairs)


def test_cached_decode_equals_the_full_pass(model):
  tokens, key, depth = _tokens((2, 7)), jax.random.key(3), 3
  full = nnx.jit(lambda m, t: m(t, key, depth=depth))(model, tokens)
  logits, caches = model.prefill(tokens[:, :4], key, depth=depth)
  decode = nnx.jit(recurrent.RecurrentLM.decode)
  np.testing.assert_allclose(logits, full[:, :4], atol=1e-5)
  prelude, core, coda = caches
  for position in range(4, 7):
    valid = jnp.ones((2, position), bool)
    prefixes = (
      [(k, v, valid) for k, v in prelude],
      [(k, v, jnp.broadcast_to(valid, (depth, *valid.shape))) for k, v in core],
      [(k, v, valid) for k, v in coda],
    )
    step, kvs = decode(
      model, tokens[:, position : position + 1], position, key, prefixes
    )
    np.testing.assert_allclose(step[:, 0], full[:, position], atol=1e-5)
    caches = jax.tree.map(
      lambda cache, new: jnp.concatenate([cache, new], axis=-3),
      (prelude, core, coda),
      kvs,
    )
    prelude, core, coda = caches


def test_chunked_attention_gives_the_dense_logits_and_gradients():
  tokens, key = _tokens((2, 8)), jax.random.key(2)
  out = {}
  for impl in ("dense", "chunked"):
    layers = dataclasses.replace(LAYERS, attention_impl=impl)
    spec = dataclasses.replace(SPEC, layers=layers)
    model = randomize(recurrent.RecurrentLM(spec, rngs=nnx.Rngs(0)), 4)
    graphdef, params = nnx.split(model)

    def loss(params, graphdef=graphdef):
      logits = nnx.merge(graphdef, params)(
        tokens, key, depth=jnp.int32(3), backprop_depth=2
      )
      return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    out[impl] = jax.jit(jax.value_and_grad(loss))(params)
  (dense, dense_grads), (chunked, grads) = out["dense"], out["chunked"]
  assert float(chunked) == pytest.approx(float(dense), rel=1e-5)
  # float32 rounding, through three iterations: within 2e-5 of each
  # gradient's largest entry.
  for a, b in zip(
    jax.tree.leaves(grads), jax.tree.leaves(dense_grads), strict=True
  ):
    scale = float(np.abs(b).max())
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * scale)


def test_depth_sampler_has_the_configured_mean():
  keys = jax.random.split(jax.random.key(0), 4000)
  depths = np.asarray(jax.vmap(lambda k: recurrent.sample_depth(k, 32.0))(keys))
  assert depths.min() >= 1
  assert depths.mean() == pytest.approx(33.0, rel=0.05)


def test_layer_split_must_sum_to_the_depth():
  with pytest.raises(ValueError, match="must equal num_layers=4"):
    recurrent.RecurrentConfig(LAYERS, 2, 2, 2)
  with pytest.raises(ValueError, match="recurrent_layers=0 must be at least 1"):
    recurrent.RecurrentConfig(LAYERS, 2, 0, 2)


# ----- The baseline task ------------------------------------------------------


def test_baseline_generation_cached_equals_uncached(model):
  task = recurrent_depth.RecurrentDepthLM(
    mean_depth=4.0, backprop_depth=2, inference_depth=3
  )
  prompt, key = _tokens((2, 4), seed=5), jax.random.key(7)
  parts = lambda b: {"model": model}  # noqa: E731
  cached = task.generate(parts, prompt, key, num_tokens=5)
  uncached = task.generate(parts, prompt, key, num_tokens=5, use_cache=False)
  np.testing.assert_array_equal(cached, uncached)
  np.testing.assert_array_equal(cached[:, :4], prompt)


def test_baseline_loss_draws_a_depth_per_step(model):
  task = recurrent_depth.RecurrentDepthLM(mean_depth=6.0, backprop_depth=2)
  batch = {"tokens": _tokens((2, 8))}
  depths = [
    float(
      task.loss({"model": model}, batch, None, jax.random.key(i))[1]["depth"]
    )
    for i in range(8)
  ]
  assert min(depths) >= 1 and len(set(depths)) > 2


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"inference_depth": 0}, "inference_depth=0 must be at least 1"),
    ({"backprop_depth": 40}, "cannot exceed the mean depth"),
  ],
)
def test_baseline_rejects_bad_depths(fields, message):
  with pytest.raises(ValueError, match=message):
    recurrent_depth.RecurrentDepthLM(**fields)


# ----- DiffusionBlocks with a prelude ----------------------------------------


@pytest.fixture(scope="module")
def db_parts():
  """parts_for_block of a random one-block DiffusionBlocks recurrent LM."""
  rngs = nnx.Rngs(0)
  parts = {
    **ar.make_shell(LAYERS, rngs),
    **recurrent.make_prelude(SPEC, rngs),
    "targets": ar.make_targets(LAYERS, trainable=True, rngs=rngs),
    "layers": ar.make_layers(LAYERS, 3, rngs),
  }
  for i, module in enumerate(parts.values()):
    randomize(module, i)
  return lambda b: parts


def test_prelude_injection_does_not_leak(db_parts):
  task = autoregressive.NextTokenDiffusion()
  tokens = _tokens((2, 8))
  z = jax.random.normal(jax.random.key(1), (2, 8, LAYERS.width))
  sigma = jnp.full((2, 8), 0.7)
  logits, _ = task.denoise(db_parts(0), tokens, z, sigma)
  i = 5
  future = tokens.at[:, i:].set((tokens[:, i:] + 3) % LAYERS.vocab_size)
  changed, _ = task.denoise(db_parts(0), future, z, sigma)
  np.testing.assert_array_equal(changed[:, : i + 1], logits[:, : i + 1])
  assert not np.allclose(changed[:, i + 1 :], logits[:, i + 1 :])


@pytest.mark.parametrize("steps", [1, 4])
def test_prelude_generation_cached_equals_uncached(db_parts, steps):
  from dblocks_jax.tasks import Sampler

  sampler = Sampler(np.geomspace(80, 0.002, steps), np.zeros(steps, int))
  task = autoregressive.NextTokenDiffusion(estimate="hard")
  prompt, key = _tokens((2, 4), seed=5), jax.random.key(7)
  kw = dict(sampler=sampler, num_tokens=4)
  cached = task.generate(db_parts, prompt, key, **kw)
  uncached = task.generate(db_parts, prompt, key, use_cache=False, **kw)
  np.testing.assert_array_equal(cached, uncached)


# ----- The family -------------------------------------------------------------


def _family_params(config) -> int:
  model = families.get("recurrent").build(config).model
  modules = [*model.shared.values()]
  modules += [m for block in model.blocks for m in block.values()]
  return sum(_params(m) for m in modules)


@pytest.mark.parametrize("arg", ["smoke", "smoke,baseline"])
def test_parameter_count_is_independent_of_k(arg):
  counts = set()
  for k in (1, 8, 32):
    config = huginn_pydocs.get_config(arg)
    config.sampler.num_steps = k
    counts.add(_family_params(config))
  assert len(counts) == 1


def test_blockwise_inference_scans_one_block_k_times():
  # K Euler steps of the one block compile its layers once (the scanned
  # body) plus the final evaluation, whatever K is.
  from dblocks_jax.tasks import Sampler

  config = huginn_pydocs.get_config("smoke")
  experiment = families.get("recurrent").build(config)
  model, task = experiment.model, experiment.task
  parts = {**model.shared, **model.blocks[0]}
  batch = {"tokens": _tokens((2, 8))}

  def dots(k):
    sampler = Sampler.of(experiment.plan, k)
    jaxpr = jax.make_jaxpr(
      lambda t: task.predict(
        lambda b: parts, {"tokens": t}, jax.random.key(0), sampler=sampler
      )
    )(batch["tokens"])
    return str(jaxpr).count("dot_general"), str(jaxpr).count("scan")

  assert dots(4) == dots(32)
  assert dots(32)[1] >= 1


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"coda_layers": 2}, "must equal model.num_layers=3"),
    ({"num_steps": 0}, "sampler.num_steps=0"),
  ],
)
def test_family_bad_input_names_the_field(overrides, message):
  config = huginn_pydocs.get_config("smoke")
  if "coda_layers" in overrides:
    config.model.coda_layers = overrides["coda_layers"]
  else:
    config.sampler.num_steps = overrides["num_steps"]
  with pytest.raises(ConfigError, match=message):
    families.get("recurrent").build(config)


def test_baseline_truncation_beyond_the_mean_depth_is_refused():
  config = huginn_pydocs.get_config("smoke,baseline")
  config.recurrence.backprop_depth = 4
  with pytest.raises(ConfigError, match="recurrence.backprop_depth=4"):
    families.get("recurrent").build(config)


# ----- Training FLOPs ---------------------------------------------------------


def test_training_flops_come_from_the_compiled_step():
  from dblocks_jax.families import flops

  config = huginn_pydocs.get_config("smoke,baseline")
  out = flops.training_flops(config)
  assert out["mean_depth_drawn"] == pytest.approx(4.0, rel=0.02)
  # Deeper draws cost more: one forward iteration more than k.
  assert out["step_flops"] > out["flops_at_backprop_depth"] > 0
  assert out["flops_per_forward_iteration"] > 0
  assert out["train_flops"] == out["step_flops"] * config.total_steps
  # The affine model holds further out: depth k + 6 compiled directly.
  experiment = families.get("recurrent").build(config)
  depth = step_depth(experiment.task)
  k = depth.backprop
  assert k == experiment.task.backprop_depth
  deep = depth.fixed(k + 6)
  assert deep == dataclasses.replace(experiment.task, fixed_depth=k + 6)
  direct = flops.step_flops(config, dataclasses.replace(experiment, task=deep))
  at_k_plus_1 = out["flops_at_k_plus_1"]
  assert direct == pytest.approx(
    at_k_plus_1 + 5 * out["flops_per_forward_iteration"], rel=1e-3
  )
  blockwise = flops.training_flops(huginn_pydocs.get_config("smoke"))
  assert blockwise["block_flops"] == [blockwise["step_flops"]]


def test_the_task_says_whether_its_steps_draw_a_depth():
  """FLOPs ask the task: the baseline draws Huginn's depth per step; the
  block-wise task (and every other) runs one program."""
  baseline = families.get("recurrent").build(
    huginn_pydocs.get_config("smoke,baseline")
  )
  task = baseline.task
  depth = step_depth(task)
  keys = jax.random.split(jax.random.key(0), 4)
  expected = [
    recurrent.sample_depth(key, task.mean_depth, task.depth_sigma)
    for key in keys
  ]
  np.testing.assert_array_equal(jax.vmap(depth.draw)(keys), expected)
  assert depth.fixed(3).fixed_depth == 3 and task.fixed_depth == 0
  blockwise = families.get("recurrent").build(huginn_pydocs.get_config("smoke"))
  assert step_depth(blockwise.task) is None


def test_the_recurrent_evaluation_adds_the_training_flops(monkeypatch):
  """The generic evaluator adds step and training FLOPs (counted once) for
  a family that reports them; the autoregressive family does not."""
  from dblocks_jax.families import ar as ar_family
  from dblocks_jax.families import evaluation, flops

  counted = []

  def training_flops(config):
    counted.append(config)
    return {"step_flops": 5.0}

  def evaluator(self, config, experiment, workdir):
    return lambda trainer: {"accuracy": 0.5}

  monkeypatch.setattr(flops, "training_flops", training_flops)
  monkeypatch.setattr(ar_family.ARFamily, "evaluator", evaluator)
  config = huginn_pydocs.get_config("smoke")
  family = families.get("recurrent")
  evaluate = evaluation.evaluator(family, config, None, "/nonexistent")
  trainer = types.SimpleNamespace(step_count=3)
  assert evaluate(trainer) == {
    "accuracy": 0.5,
    "step_flops": 5.0,
    "train_flops": 15.0,
  }
  trainer.step_count = 4
  assert evaluate(trainer)["train_flops"] == 20.0 and counted == [config]
  plain = evaluation.evaluator(families.get("ar"), config, None, "")
  assert plain(trainer) == {"accuracy": 0.5}


def test_ar_noise_narrows_the_sampling_grid_of_the_one_block():
  paper = huginn_pydocs.get_config()
  narrowed = huginn_pydocs.get_config("ar_noise")
  assert (narrowed.diffusion.p_mean, narrowed.diffusion.p_std) == (-0.7, 0.5)
  levels = {
    name: common.sampler_from_config(c, common.plan_from_config(c)).levels
    for name, c in (("paper", paper), ("narrowed", narrowed))
  }
  # The same ends; the steps between them gather where tokens are decided
  # (the AR family's finding), not spread down to sigma 0.08.
  for name in levels:
    assert levels[name][0] == 80 and levels[name][-1] == 0.002
  inner = {name: levels[name][1:-1] for name in levels}
  assert inner["narrowed"].min() > 0.25 > inner["paper"].min()
  assert inner["narrowed"].max() < 0.9 < inner["paper"].max()
