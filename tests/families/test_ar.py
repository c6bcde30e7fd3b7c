"""The autoregressive LM family: the 2T mask and its leakage, KV-cached
generation, the Llama layers, the tokenizer, training and evaluation, and
bad input."""

import copy
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs
from flax import nnx
from random_params import (
  block_loss_and_gradients,
  randomize,
)

from configs import ar_lm1b, ar_pydocs, huginn_pydocs
from dblocks_jax import families
from dblocks_jax.blockwise import steps
from dblocks_jax.cli import evaluation
from dblocks_jax.data import tokenizer as tokenizers
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.evaluate import diversity
from dblocks_jax.evaluate import judge as judging
from dblocks_jax.evaluate.judge import Judge
from dblocks_jax.families import ar as ar_family
from dblocks_jax.families import evaluation as wiring
from dblocks_jax.families import runs, train
from dblocks_jax.models import ar
from dblocks_jax.nn import llama
from dblocks_jax.tasks import Sampler
from dblocks_jax.tasks import autoregressive as tasks

SPEC = ar.ARConfig(
  vocab_size=40,
  max_seq_len=16,
  num_layers=4,
  width=32,
  num_heads=4,
  mlp_dim=48,
  cond_dim=24,
  frequency_dim=16,
)
# Two blocks of two layers, four grid points: blocks 0, 0, 1, 1.
SAMPLER = Sampler(np.array([80.0, 2.0, 0.2, 0.002]), np.array([0, 0, 1, 1]))


@pytest.fixture(scope="module")
def blockwise_parts():
  """parts_for_block of a random two-block DiffusionBlocks model."""
  rngs = nnx.Rngs(0)
  shell = ar.make_shell(SPEC, rngs)
  shell["targets"] = ar.make_targets(SPEC, trainable=True, rngs=rngs)
  blocks = [ar.make_layers(SPEC, 2, rngs) for _ in range(2)]
  for i, module in enumerate([*shell.values(), *blocks]):
    randomize(module, i)
  return lambda b: {**shell, "layers": blocks[b]}


@pytest.fixture(scope="module")
def baseline_model():
  return randomize(ar.LlamaLM(SPEC, rngs=nnx.Rngs(0)), 7)


def _tokens(shape, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, SPEC.vocab_size)


# ----- The 2T layout ----------------------------------------------------------


def test_two_stream_mask_equals_its_definition():
  length = 5
  mask = np.asarray(tasks.two_stream_mask(length))[0, 0]
  expected = np.zeros((2 * length, 2 * length), bool)
  for i in range(length):
    expected[i, i] = True  # noisy_i sees itself,
    for j in range(length):
      expected[i, length + j] = j < i  # and the clean tokens before it;
      expected[length + i, length + j] = j <= i  # clean_i: causal.
  np.testing.assert_array_equal(mask, expected)


def test_logits_at_noisy_i_ignore_the_future_and_the_other_noisy_tokens(
  blockwise_parts,
):
  task = tasks.NextTokenDiffusion()
  parts = blockwise_parts(0)
  tokens = _tokens((2, 8))
  z = jax.random.normal(jax.random.key(1), (2, 8, SPEC.width))
  sigma = jax.random.uniform(jax.random.key(2), (2, 8), minval=0.01, maxval=5)
  logits, _ = task.denoise(parts, tokens, z, sigma)
  for i in range(8):
    future = tokens.at[:, i:].set((tokens[:, i:] + 11) % SPEC.vocab_size)
    others = jnp.arange(8) != i
    z_changed = z + 3.0 * others[None, :, None]
    sigma_changed = jnp.where(others, sigma * 2.0, sigma)
    changed, _ = task.denoise(parts, future, z_changed, sigma_changed)
    np.testing.assert_array_equal(changed[:, i], logits[:, i])
  # ... while each input does reach the positions allowed to see it.
  earlier = tokens.at[:, 3].set((tokens[:, 3] + 1) % SPEC.vocab_size)
  changed, _ = task.denoise(parts, earlier, z, sigma)
  assert not np.allclose(changed[:, 4], logits[:, 4])


def test_noisy_and_clean_tokens_share_the_rotary_position():
  # RoPE scores depend only on the offset between two positions.
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))

  def score(m, n):
    return float(
      jnp.sum(
        llama.rotary(q, jnp.array([m]), 1e4)
        * llama.rotary(k, jnp.array([n]), 1e4)
      )
    )

  assert score(7, 3) == pytest.approx(score(4, 0), rel=1e-5)
  assert score(3, 3) == pytest.approx(float(jnp.sum(q * k)), rel=1e-5)


def test_each_token_draws_its_own_sigma_by_default():
  batch = {"tokens": jnp.zeros((3, 8), jnp.int32)}
  assert steps._level_shape(tasks.NextTokenDiffusion(), batch) == (3, 8)
  per_sequence = tasks.NextTokenDiffusion(sigma_per="sequence")
  assert steps._level_shape(per_sequence, batch) == (3,)


def test_loss_is_the_weighted_cross_entropy_of_positions_after_the_first(
  blockwise_parts,
):
  task = tasks.NextTokenDiffusion()
  parts = blockwise_parts(1)
  tokens = _tokens((2, 6))
  sigma = jnp.full((2, 6), 0.5)
  loss, metrics = task.loss(parts, {"tokens": tokens}, sigma, jax.random.key(0))
  # At sigma 0.5 the EDM weight is (0.25 + 0.25) / 0.0625 = 8.
  assert float(loss) == pytest.approx(8 * float(metrics["ce"]), rel=1e-5)


# ----- Generation -------------------------------------------------------------


@pytest.mark.parametrize("estimate", ["hard", "soft"])
def test_cached_generation_equals_uncached_token_for_token(
  blockwise_parts, estimate
):
  task = tasks.NextTokenDiffusion(estimate=estimate)
  prompt = _tokens((3, 4), seed=3)

  def run(use_cache):
    fn = jax.jit(
      lambda p, k: task.generate(
        blockwise_parts,
        p,
        k,
        sampler=SAMPLER,
        num_tokens=8,
        use_cache=use_cache,
      )
    )
    return np.asarray(fn(prompt, jax.random.key(5)))

  cached, uncached = run(True), run(False)
  np.testing.assert_array_equal(cached, uncached)
  np.testing.assert_array_equal(cached[:, :4], prompt)
  if estimate == "hard":  # The random soft chain settles on one token.
    assert len(np.unique(cached[:, 4:])) > 3


def test_baseline_cached_generation_equals_uncached(baseline_model):
  task = tasks.CausalLM(top_p=0.95)
  parts_for_block = lambda b: {"model": baseline_model}
  prompt = _tokens((3, 4), seed=4)
  outputs = [
    np.asarray(
      jax.jit(
        lambda p, k, c=use_cache: task.generate(
          parts_for_block, p, k, num_tokens=8, use_cache=c
        )
      )(prompt, jax.random.key(6))
    )
    for use_cache in (True, False)
  ]
  np.testing.assert_array_equal(*outputs)


def test_decoding_with_the_cache_reproduces_the_full_forward(baseline_model):
  tokens = _tokens((2, 7), seed=8)
  full = baseline_model(tokens)
  logits, kvs = baseline_model.prefill(tokens[:, :3])
  np.testing.assert_allclose(logits, full[:, :3], atol=1e-5)
  cache = tasks._empty_cache(kvs, 7)
  for p in range(3, 7):
    step, new = baseline_model.decode(
      tokens[:, p : p + 1], p, tasks._prefixes(cache, p)
    )
    cache = tasks._write(cache, new, p)
    np.testing.assert_allclose(step[:, 0], full[:, p], atol=1e-5)


def test_teacher_forced_chain_gives_logits_for_every_position(blockwise_parts):
  task = tasks.NextTokenDiffusion()
  tokens = _tokens((2, 6))
  logits = task.predict(
    blockwise_parts, {"tokens": tokens}, jax.random.key(0), sampler=SAMPLER
  )
  assert logits.shape == (2, 6, SPEC.vocab_size)
  # Row i depends on tokens < i only.
  changed = task.predict(
    blockwise_parts,
    {"tokens": tokens.at[:, 4:].set(0)},
    jax.random.key(0),
    sampler=SAMPLER,
  )
  np.testing.assert_array_equal(changed[:, :5], logits[:, :5])


def test_temperature_scales_the_starting_noise(blockwise_parts):
  tokens = _tokens((2, 6))

  def predict(task, seed):
    return task.predict(
      blockwise_parts,
      {"tokens": tokens},
      jax.random.key(seed),
      sampler=SAMPLER,
    )

  official = tasks.NextTokenDiffusion()
  assert not np.allclose(predict(official, 0), predict(official, 1))
  frozen = tasks.NextTokenDiffusion(temperature=0.0)  # No noise: no key.
  np.testing.assert_array_equal(predict(frozen, 0), predict(frozen, 1))
  with pytest.raises(ValueError, match="temperature=-1"):
    tasks.NextTokenDiffusion(temperature=-1.0)


def test_top_p_keeps_the_smallest_set_that_reaches_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 400)
  draws = np.array(
    [int(tasks.top_p_sample(k, logits, 0.75)[0]) for k in keys[:200]]
  )
  assert set(draws) == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3.
  greedy = [int(tasks.top_p_sample(k, logits, 0.4)[0]) for k in keys[:20]]
  assert set(greedy) == {0}
  with pytest.raises(ValueError, match="top_p"):
    tasks.top_p_sample(keys[0], logits, 0.0)


def test_nucleus_keeps_the_order_and_masks_the_tail():
  probs = jnp.array([[0.15, 0.5, 0.05, 0.3], [0.25, 0.25, 0.25, 0.25]])
  kept = np.isfinite(np.asarray(tasks.nucleus(jnp.log(probs), 0.75)))
  np.testing.assert_array_equal(kept[0], [False, True, False, True])
  assert kept[1].sum() == 4  # Ties at the threshold stay.
  everything = tasks.nucleus(jnp.log(probs), 1.0)
  np.testing.assert_allclose(everything, jnp.log(probs))


def test_nucleus_estimate_averages_over_the_nucleus(blockwise_parts):
  parts = blockwise_parts(0)
  logits = jnp.log(jnp.array([[0.6, 0.3] + [0.1 / 38] * 38]))
  task = tasks.NextTokenDiffusion(estimate="nucleus", top_p=0.8)
  rows = parts["targets"].normalized()
  expected = (2 * rows[0] + rows[1]) / 3
  np.testing.assert_allclose(
    task._estimate(parts, logits)[0], expected, atol=1e-6
  )
  with pytest.raises(ValueError, match="top_p"):
    tasks.NextTokenDiffusion(estimate="nucleus", top_p=1.5)


def test_generation_needs_at_least_one_new_token(blockwise_parts):
  with pytest.raises(ValueError, match="num_tokens=0"):
    tasks.NextTokenDiffusion().generate(
      blockwise_parts,
      _tokens((1, 3)),
      jax.random.key(0),
      sampler=SAMPLER,
      num_tokens=0,
    )


# ----- Model ------------------------------------------------------------------


@pytest.mark.parametrize("blockwise", [True, False])
def test_parameter_count_matches_the_modules(blockwise):
  rngs = nnx.Rngs(0)
  if blockwise:
    modules = (
      ar.make_shell(SPEC, rngs),
      ar.make_targets(SPEC, trainable=True, rngs=rngs),
      ar.make_layers(SPEC, SPEC.num_layers, rngs),
    )
  else:
    modules = ar.LlamaLM(SPEC, rngs=rngs)
  count = sum(x.size for x in jax.tree.leaves(nnx.state(modules, nnx.Param)))
  assert count == ar.param_count(SPEC, blockwise=blockwise)


def test_a_fresh_denoiser_predicts_uniform_logits():
  rngs = nnx.Rngs(0)
  parts = {
    **ar.make_shell(SPEC, rngs),
    "targets": ar.make_targets(SPEC, trainable=True, rngs=rngs),
    "layers": ar.make_layers(SPEC, 2, rngs),
  }
  z = jnp.ones((1, 5, SPEC.width))
  logits, _ = tasks.NextTokenDiffusion().denoise(
    parts, _tokens((1, 5)), z, jnp.ones((1, 5))
  )
  np.testing.assert_array_equal(logits, 0.0)


# ----- Attention paths --------------------------------------------------------


def test_resolve_attention_picks_the_path():
  resolve = llama.resolve_attention
  bf16 = dict(dtype=jnp.bfloat16, head_dim=64)
  for platform in ("cpu", "tpu", "gpu"):
    for kind in ("causal", "two_stream", "bidirectional", "general"):
      assert resolve("dense", platform, kind, **bf16) == "dense"
      assert resolve("chunked", platform, kind, **bf16) == "chunked"
      # A dense mask array has only the dense path.
      assert resolve("chunked", platform, "array", **bf16) == "dense"
      assert resolve("auto", platform, "array", **bf16) == "dense"
  for platform in ("cpu", "tpu"):
    for kind in ("causal", "two_stream", "bidirectional", "general"):
      assert resolve("auto", platform, kind, **bf16) == "chunked"
  # GPU: cuDNN where the mask, the dtype and the head size allow it.
  assert resolve("auto", "gpu", "causal", **bf16) == "cudnn"
  assert resolve("auto", "gpu", "bidirectional", **bf16) == "cudnn"
  assert resolve("auto", "gpu", "two_stream", **bf16) == "chunked"
  assert resolve("auto", "gpu", "general", **bf16) == "chunked"
  for dtype, head_dim in (
    (jnp.float32, 64),
    ("bfloat16", 12),
    ("float16", 256),
  ):
    path = resolve("auto", "gpu", "causal", dtype=dtype, head_dim=head_dim)
    assert path == "chunked", (dtype, head_dim)
  with pytest.raises(ValueError, match="attention_impl='flash' is unknown"):
    resolve("flash", "cpu", "causal", **bf16)
  assert llama.describe_attention(
    "auto", "gpu", ("two_stream", "causal"), **bf16
  ) == ("chunked for two_stream, cudnn for causal (auto on gpu)")
  assert llama.describe_attention("dense", "cpu", ("causal",), **bf16) == (
    "dense (dense as set)"
  )


def test_mask_kind_reads_the_structure():
  spec = llama.MaskSpec
  assert llama.mask_kind(spec.causal()) == "causal"
  assert llama.mask_kind(spec.two_stream(4)) == "two_stream"
  assert llama.mask_kind(spec.bidirectional()) == "bidirectional"
  assert llama.mask_kind(spec.causal(offset=3)) == "general"
  valid = jnp.ones((2, 5), bool)
  assert llama.mask_kind(spec.bidirectional(valid)) == "general"
  assert llama.mask_kind(ar.causal_mask(5)) == "array"


def test_the_attention_impl_is_checked_and_named():
  with pytest.raises(ValueError, match="attention_impl='flash' is unknown"):
    dataclasses.replace(SPEC, attention_impl="flash")
  config = ar_pydocs.get_config("smoke")
  assert config.model.attention_impl == "auto"  # The recipes' default.
  config.model.attention_impl = "flash"
  with pytest.raises(ConfigError, match="model.attention_impl='flash'"):
    families.get("ar").build(config)


def test_the_family_logs_the_attention_path(caplog):
  config = ar_pydocs.get_config("smoke")
  family = families.get("ar")
  platform = jax.default_backend()
  # The 2T layout has no cuDNN kernel: chunked on every platform.
  assert family.attention_path(config) == f"chunked (auto on {platform})"
  config.model.attention_impl = "dense"
  assert family.attention_path(config) == "dense (dense as set)"
  with caplog.at_level("INFO"):
    family.build(config)
  assert "attention: dense (dense as set)" in caplog.text


def _smoke_block_loss(config, attention_impl):
  """(loss, gradients) of block 0's DiffusionBlocks loss of a smoke config
  on random parameters and a random batch, on `attention_impl`."""
  config = copy.deepcopy(config)
  config.model.attention_impl = attention_impl
  return block_loss_and_gradients(config)


@pytest.mark.parametrize("name", ["ar", "recurrent"])
def test_chunked_attention_gives_the_dense_loss_and_gradients(name):
  """The 2T layout's block loss (and, for the recurrent LM, its causal
  prelude) on the chunked path equals the dense path's, gradients too."""
  get = {"ar": ar_pydocs, "recurrent": huginn_pydocs}[name].get_config
  config = get("smoke")
  dense_loss, dense_grads = _smoke_block_loss(config, "dense")
  loss, grads = _smoke_block_loss(config, "chunked")
  assert float(loss) == pytest.approx(float(dense_loss), rel=1e-5)
  leaves = jax.tree.leaves(grads)
  dense_leaves = jax.tree.leaves(dense_grads)
  assert len(leaves) == len(dense_leaves)
  for a, b in zip(leaves, dense_leaves, strict=True):
    scale = float(np.abs(b).max()) + 1e-12
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_chunked_attention_gives_the_dense_baseline_and_cache():
  tokens = _tokens((2, 12), seed=9)
  models = {}
  for impl in ("dense", "chunked"):
    spec = dataclasses.replace(SPEC, attention_impl=impl)
    models[impl] = randomize(ar.LlamaLM(spec, rngs=nnx.Rngs(0)), 7)

  def loss(model):
    return jnp.mean(jax.nn.log_softmax(model(tokens))[..., 0])

  values = {k: nnx.value_and_grad(loss)(m) for k, m in models.items()}
  (dense, dense_grads), (chunked, grads) = values["dense"], values["chunked"]
  assert float(chunked) == pytest.approx(float(dense), rel=1e-5)
  for a, b in zip(
    jax.tree.leaves(grads), jax.tree.leaves(dense_grads), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The prefill (chunked) fills the cache the decode (dense) reads.
  full = models["dense"](tokens)
  logits, kvs = models["chunked"].prefill(tokens[:, :5])
  np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
  cache = tasks._empty_cache(kvs, 12)
  step, _ = models["chunked"].decode(
    tokens[:, 5:6], 5, tasks._prefixes(cache, 5)
  )
  np.testing.assert_allclose(step[:, 0], full[:, 5], atol=1e-5)


# ----- Tokenizer --------------------------------------------------------------

CORPUS = [
  "Python is a programming language.\n\n  def f(x):\n      return x + 1\n",
  "The standard library offers modules: os, sys, re and json 2024.\n",
] * 20


def test_bpe_training_is_deterministic_and_round_trips_text():
  needs("sentencepiece", "lm")
  first = tokenizers.train_bpe(CORPUS, 300, source="test")
  second = tokenizers.train_bpe(CORPUS, 300, source="test")
  assert first.proto == second.proto
  assert first.vocab_size == 300
  for text in CORPUS[:2] + ["unseen: ~é\ttab"]:
    assert first.decode(first.encode([text])[0]) == text


def test_tokenizer_errors_name_the_field(tmp_path):
  needs("sentencepiece", "lm")
  with pytest.raises(DataError, match="data.tokenizer="):
    tokenizers.load(str(tmp_path / "missing.model"))
  tok = tokenizers.train_bpe(CORPUS, 300, source="test")
  path = tok.save(str(tmp_path / "t.model"))
  assert tokenizers.load(path).proto == tok.proto
  with pytest.raises(DataError, match="model.vocab_size=300"):
    tokenizers.check_vocab(tokenizers.load(path), 512)


# ----- The family -------------------------------------------------------------


@pytest.fixture
def config():
  return ar_pydocs.get_config("smoke")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  needs("sentencepiece", "lm")
  config = ar_pydocs.get_config("smoke")
  workdir = tmp_path_factory.mktemp("ar")
  return config, workdir, train.train_and_evaluate(config, str(workdir))


def test_a_blockwise_run_reports_accuracy_and_writes_continuations(trained):
  config, workdir, result = trained
  assert result["method"] == "dblocks"
  assert 0 <= result["accuracy"] <= 1
  assert result["num_tokens"] == config.eval.max_sequences * (
    config.data.seq_len - 1
  )
  with open(result["samples"]) as f:
    lines = [json.loads(line) for line in f]
  e = config.eval
  assert len(lines) == e.num_prompts * e.samples_per_prompt
  assert {len(x["continuation_ids"]) for x in lines} == {e.continuation_length}
  assert {len(x["prompt_ids"]) for x in lines} == {e.prompt_length}
  assert result["decoding"] == "greedy"
  saved = tokenizers.load(str(workdir / ar_family.TOKENIZER_FILE))
  assert saved.vocab_size == config.model.vocab_size


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
  """(workdir, eval.json) of the AR baseline's smoke run: also the judge."""
  needs("sentencepiece", "lm")
  config = ar_pydocs.get_config("smoke,e2e")
  workdir = tmp_path_factory.mktemp("ar_e2e")
  return workdir, train.train_and_evaluate(config, str(workdir))


def test_the_baseline_samples_with_top_p(baseline_run):
  _, result = baseline_run
  assert result["method"] == "e2e"
  assert result["decoding"] == "top-p 0.95"
  assert os.path.isfile(result["samples"])


def test_a_judge_gives_generative_perplexity_and_mauve(trained, baseline_run):
  needs("mauve", "lm")
  config, workdir, _ = trained
  judge_dir, _ = baseline_run
  config = copy.deepcopy(config)
  config.eval.judge_workdir = str(judge_dir)
  result = evaluation.evaluate_checkpoint(config, str(workdir))
  assert result["judge_workdir"] == str(judge_dir)
  assert result["gen_ppl"] > 1 and result["reference_gen_ppl"] > 1
  assert 0 < result["mauve"] <= 1
  assert result["num_references"] == config.eval.num_prompts
  assert 0 < result["distinct_bigrams"] <= 1
  assert 0 < result["reference_distinct_bigrams"] <= 1
  assert "gen-ppl" in families.get("ar").describe(result)


def test_judge_perplexity_is_the_exponent_of_the_mean_nll(baseline_run):
  judge_dir, _ = baseline_run
  tok = tokenizers.load(str(judge_dir / ar_family.TOKENIZER_FILE))
  judge = wiring.load_judge(
    str(judge_dir), vocab_size=512, tokenizer_proto=tok.proto
  )
  assert isinstance(judge, Judge)
  assert judge.description["judge_workdir"] == str(judge_dir)
  tokens = np.asarray(_tokens((3, 12), seed=2)) % 512
  config = ar_pydocs.get_config("smoke,e2e")
  _, _, trainer = runs.restore_run(config, str(judge_dir))
  logits = trainer.predict({"tokens": tokens})  # Row i predicts token i.
  nll = -jax.nn.log_softmax(logits, -1)
  picked = np.take_along_axis(np.asarray(nll), tokens[..., None], -1)[..., 0]
  expected = np.exp(picked[:, 5:].mean())
  got = judge.perplexity(tokens[:, :5], tokens[:, 5:], batch_size=2)
  assert got == pytest.approx(expected, rel=1e-4)


def test_a_judge_of_another_vocabulary_or_method_is_refused(
  trained, baseline_run
):
  judge_dir, _ = baseline_run
  _, blockwise_dir, _ = trained
  tok = tokenizers.load(str(judge_dir / ar_family.TOKENIZER_FILE))
  with pytest.raises(ConfigError, match="512-piece vocabulary"):
    wiring.load_judge(
      str(judge_dir), vocab_size=1024, tokenizer_proto=tok.proto
    )
  with pytest.raises(ConfigError, match="another tokenizer"):
    wiring.load_judge(str(judge_dir), vocab_size=512, tokenizer_proto=b"other")
  with pytest.raises(ConfigError, match="end-to-end AR LM"):
    wiring.load_judge(
      str(blockwise_dir), vocab_size=512, tokenizer_proto=tok.proto
    )


def test_the_judge_takes_any_causal_lm():
  """The library's judge reads no run: an LM callable and its arrays. A
  uniform LM over 7 tokens has perplexity 7; features are the last
  token's."""

  class Uniform:
    def __init__(self, arrays):
      self.scale = arrays["scale"]

    def __call__(self, tokens):
      return jnp.zeros((*tokens.shape, 7)) * self.scale

    def features(self, tokens):
      return jax.nn.one_hot(tokens, 7) * self.scale

  arrays = {"scale": jnp.ones(())}
  judge = Judge(Uniform, arrays, description={"judge": "uniform"})
  tokens = np.arange(15).reshape(3, 5) % 7
  got = judge.perplexity(tokens[:, :2], tokens[:, 2:], batch_size=2)
  assert got == pytest.approx(7.0, rel=1e-5)
  np.testing.assert_array_equal(
    judge.features(tokens, batch_size=2), np.eye(7)[tokens[:, -1]]
  )
  assert judge.description == {"judge": "uniform"}


def test_mauve_separates_distributions():
  needs("mauve", "lm")
  rng = np.random.default_rng(0)
  p = rng.normal(size=(400, 8))
  scores = [
    judging.mauve(p, rng.normal(size=(400, 8)) + shift, scaling=2.0, seed=1)
    for shift in (0, 1, 4)
  ]
  # At the paper's scaling 2, disjoint supports still score about 0.19.
  assert scores[0] > 0.9 and scores[2] < 0.25
  assert scores == sorted(scores, reverse=True)


def test_distinct_bigrams_count_within_rows():
  # Bigrams (1,2) (2,1) (1,2) | (3,3) (3,3) (3,3): 3 distinct of 6; the
  # pair (1,3) across the row boundary is not counted.
  tokens = np.array([[1, 2, 1, 2], [3, 3, 3, 3]])
  assert diversity.distinct_ngrams(tokens, 2) == 0.5
  assert diversity.distinct_ngrams(tokens, 1) == 3 / 8
  assert diversity.distinct_ngrams(np.arange(12).reshape(3, 4), 3) == 1.0
  with pytest.raises(ValueError, match="n=5"):
    diversity.distinct_ngrams(tokens, 5)


def test_the_blockwise_model_learns_a_deterministic_sequence():
  """Tokens that count up by one: after training every block, the routed
  chain predicts the next token almost always (chance: 1/16)."""
  from dblocks_jax.families import common

  config = ar_pydocs.get_config("smoke")
  config.model.vocab_size = 16
  config.total_steps = 450
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 30
  experiment = families.get("ar").build(config)
  trainer = common.make_trainer(config, experiment, None)
  rng = np.random.default_rng(0)

  def batches():
    while True:
      start = rng.integers(0, 16, (16, 1))
      yield {"tokens": ((start + np.arange(32)) % 16).astype(np.int32)}

  trainer.fit(batches())
  start = np.arange(8)[:, None]
  test = [{"tokens": ((start + np.arange(32)) % 16).astype(np.int32)}]
  sampler = common.sampler_from_config(config, experiment.plan)
  assert trainer.evaluate(iter(test), sampler=sampler)["accuracy"] > 0.9
  # A second evaluation reuses the compiled generator of the same settings.
  generate = ar_family.generate_fn(trainer, sampler, num_tokens=4)
  assert ar_family.generate_fn(trainer, sampler, num_tokens=4) is generate
  assert ar_family.generate_fn(trainer, sampler, num_tokens=5) is not generate


def test_lm1b_smoke_runs_on_the_python_docs():
  config = ar_lm1b.get_config("smoke")
  assert config.data.name == "pydocs"
  assert ar_lm1b.get_config().data.name == "lm1b"


def test_lm1b_without_a_tokenizer_says_which_field_to_set():
  config = ar_lm1b.get_config()
  with pytest.raises(DataError, match="data.tokenizer="):
    ar_family.corpus_from_config(config)


def test_lm1b_is_read_from_tfds_bos_prefixed_and_packed(tmp_path):
  import tensorflow_datasets as tfds

  needs("tensorflow", "tensorboard")  # TFDS reads LM1B through TensorFlow.
  needs("sentencepiece", "lm")
  tok = tokenizers.train_bpe(CORPUS, 300, source="test")
  with tfds.testing.mock_data(num_examples=6):
    ids = ar_family._lm1b_ids(str(tmp_path), "test", tok)
  assert ids.dtype == np.int32 and len(ids) > 6
  assert ids.min() >= 0 and ids.max() < tok.vocab_size


def test_a_prompt_longer_than_the_context_is_refused(config):
  config.eval.prompt_length = 30
  config.eval.continuation_length = 8
  with pytest.raises(ConfigError, match="model.max_seq_len=32"):
    ar_family.held_out_prompts(config, np.zeros(10_000, np.int32))


def test_continuations_need_at_least_one_token(config):
  config.eval.continuation_length = 0
  with pytest.raises(ConfigError, match="eval.continuation_length=0"):
    ar_family.held_out_prompts(config, np.zeros(10_000, np.int32))


def test_a_missing_corpus_says_how_to_install_it(config, tmp_path):
  config.data.dir = str(tmp_path)
  with pytest.raises(DataError, match="python3.11-doc"):
    ar_family.corpus_from_config(config)


def test_a_tokenizer_of_another_vocabulary_is_refused(config, tmp_path):
  needs("sentencepiece", "lm")
  path = tokenizers.train_bpe(CORPUS, 300, source="test").save(
    str(tmp_path / "t.model")
  )
  config.data.tokenizer = path
  with pytest.raises(DataError, match="model.vocab_size=300"):
    ar_family.corpus_from_config(config)


def test_unknown_sigma_per_names_the_field(config):
  config.diffusion.sigma_per = "layer"
  with pytest.raises(ConfigError, match="diffusion.sigma_per"):
    families.get("ar").build(config)


def test_seq_len_beyond_the_context_is_refused(config):
  bad = copy.deepcopy(config)
  bad.data.seq_len = 64
  with pytest.raises(ConfigError, match="model.max_seq_len=32"):
    families.get("ar").build(bad)


def test_fewer_than_one_sampler_step_names_the_field(config, tmp_path):
  needs("sentencepiece", "lm")
  config.sampler.num_steps = -1
  experiment = families.get("ar").build(config)
  with pytest.raises(ConfigError, match="sampler.num_steps"):
    families.get("ar").evaluator(config, experiment, str(tmp_path))


def test_an_unknown_eval_split_names_the_field(config, tmp_path):
  needs("sentencepiece", "lm")
  config.data.eval_split = "dev"
  experiment = families.get("ar").build(config)
  with pytest.raises(ConfigError, match="data.eval_split='dev'"):
    families.get("ar").evaluator(config, experiment, str(tmp_path))
