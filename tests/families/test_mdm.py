"""The masked-diffusion LM family: model, routed ancestral sampler, BPC
evaluation, the command-line modes and bad input."""

import copy
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import mdm_pydocs, mdm_text8
from dblocks_jax import families
from dblocks_jax.blockwise.plan import BlockPlan
from dblocks_jax.cli import memory, sampling
from dblocks_jax.data import text
from dblocks_jax.diffusion.masking import Masking
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.families import mdm as mdm_family
from dblocks_jax.families import train
from dblocks_jax.models import mdm
from dblocks_jax.tasks import Sampler
from dblocks_jax.tasks.masked_diffusion import MaskedDiffusion


@pytest.fixture
def config():
  return mdm_pydocs.get_config("smoke")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, workdir, eval.json) of a finished block-wise smoke run."""
  config = mdm_pydocs.get_config("smoke")
  workdir = tmp_path_factory.mktemp("mdm")
  return config, workdir, train.train_and_evaluate(config, str(workdir))


# ----- Model ------------------------------------------------------------------


def _read(path) -> str:
  with open(path) as f:
    return f.read()


def _model(spec):
  rngs = nnx.Rngs(0)
  return mdm.make_shell(spec, rngs), mdm.make_layers(
    spec, spec.num_layers, rngs
  )


def test_fresh_model_predicts_uniform_logits_over_the_clean_symbols():
  spec = mdm.MDMConfig(num_layers=2, width=16, num_heads=2, max_seq_len=8)
  shell, layers = _model(spec)
  parts = {**shell, "layers": layers}
  task = MaskedDiffusion(vocab_size=spec.vocab_size)
  tokens = jnp.full((3, 8), task.mask_id)
  logits = task.logits(parts, tokens, jnp.full((3,), 0.5))
  assert logits.shape == (3, 8, 27)  # No logit for [MASK].
  np.testing.assert_array_equal(logits, 0.0)  # Zero readout.


def test_parameter_count_matches_the_formula():
  spec = mdm.MDMConfig(num_layers=3, width=32, num_heads=4, max_seq_len=16)
  shell, layers = _model(spec)
  count = sum(
    x.size for x in jax.tree.leaves(nnx.state((shell, layers), nnx.Param))
  )
  assert count == mdm.param_count(spec)


def test_a_sequence_longer_than_the_position_table_is_refused():
  spec = mdm.MDMConfig(num_layers=1, width=16, num_heads=2, max_seq_len=8)
  shell, _ = _model(spec)
  with pytest.raises(ValueError, match="model.max_seq_len >= 9"):
    shell["stem"](jnp.zeros((1, 9), jnp.int32))


def test_attention_is_bidirectional():
  """A token's logits depend on later tokens (no causal mask)."""
  spec = mdm.MDMConfig(num_layers=1, width=16, num_heads=2, max_seq_len=6)
  shell, layers = _model(spec)
  # Give the zero-initialised readout and gates weights to pass signal.
  state = nnx.state((shell, layers), nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  noisy = [
    x + 0.1 * jax.random.normal(k, x.shape)
    for x, k in zip(leaves, keys, strict=True)
  ]
  nnx.update((shell, layers), jax.tree.unflatten(tree, noisy))
  task = MaskedDiffusion(vocab_size=27)
  parts = {**shell, "layers": layers}
  tokens = jnp.asarray([[1, 2, 3, 4, 5, 27]])
  later = tokens.at[0, 5].set(9)
  t = jnp.asarray([0.5])
  first = task.logits(parts, tokens, t)[0, 0]
  assert not np.allclose(first, task.logits(parts, later, t)[0, 0])


# ----- Routed ancestral sampler -----------------------------------------------


def test_sampler_routes_each_step_by_the_interval_it_covers():
  plan = BlockPlan.create(Masking(), num_layers=6, num_blocks=3, gamma=0.05)
  sampler = Sampler.of(plan, 3, method="ancestral")
  np.testing.assert_allclose(sampler.levels, [1, 2 / 3, 1 / 3])
  np.testing.assert_array_equal(sampler.blocks, [0, 1, 2])
  np.testing.assert_array_equal(
    Sampler.of(plan, 6, method="ancestral").blocks, [0, 0, 1, 1, 2, 2]
  )


def _block_marking_task():
  """A task whose block b always predicts symbol b + 1."""

  def denoise(parts, x_t, t, *, time_scale):
    del t, time_scale
    return 50.0 * jax.nn.one_hot(parts["block"] + 1, 27) + 0.0 * x_t[..., None]

  return MaskedDiffusion(vocab_size=27, denoise=denoise)


def test_ancestral_sampler_reveals_alpha_steps_with_the_owning_block():
  task = _block_marking_task()
  plan = BlockPlan.create(Masking(), num_layers=3, num_blocks=3, gamma=0.0)
  sampler = Sampler.of(plan, 3, method="ancestral")
  masked = jnp.full((64, 100), task.mask_id)
  out = task.predict(
    lambda b: {"block": b},
    {"tokens": masked},
    jax.random.key(0),
    sampler=sampler,
  )
  out = np.asarray(out)
  assert not np.any(out == task.mask_id)
  # alpha rises by 1/3 per step, so each block reveals a third.
  shares = [np.mean(out == b + 1) for b in range(3)]
  np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.02)


def test_ancestral_sampler_keeps_the_prompt():
  task = _block_marking_task()
  plan = BlockPlan.create(Masking(), num_layers=3, num_blocks=3, gamma=0.0)
  sampler = Sampler.of(plan, 5, method="ancestral")
  prompt = jnp.asarray([[7, 8, 27, 27, 9, 27]] * 4)
  out = np.asarray(
    task.predict(
      lambda b: {"block": b},
      {"tokens": prompt},
      jax.random.key(1),
      sampler=sampler,
    )
  )
  np.testing.assert_array_equal(out[:, [0, 1, 4]], [[7, 8, 9]] * 4)
  assert np.all(np.isin(out[:, [2, 3, 5]], [1, 2, 3]))


def test_predict_needs_the_ancestral_sampler():
  plan = BlockPlan.create(Masking(), num_layers=3, num_blocks=3)
  with pytest.raises(ValueError, match="ancestral"):
    _block_marking_task().predict(
      lambda b: {"block": b},
      {"tokens": jnp.zeros((1, 4), jnp.int32)},
      jax.random.key(0),
      sampler=Sampler.of(plan, 3),
    )


# ----- The family and the command-line modes ----------------------------------


def test_the_baseline_is_one_block_over_the_whole_schedule(config):
  baseline = families.end_to_end_config(config)
  plan = families.get("mdm").build(baseline).plan
  assert plan.num_blocks == 1
  np.testing.assert_array_equal(plan.boundaries, [1.0, 0.0])
  blockwise = families.get("mdm").build(config).plan
  np.testing.assert_allclose(blockwise.boundaries, [1, 2 / 3, 1 / 3, 0])


def test_training_lowers_bpc_and_writes_eval_and_samples(trained):
  config, workdir, result = trained
  saved = json.loads((workdir / "eval.json").read_text())
  assert saved["num_sequences"] == config.eval.max_sequences == 64
  assert saved["num_t_samples"] == 3
  assert 0 < saved["bpc_stderr"] < 0.5
  assert saved["bpc"] == pytest.approx(sum(saved["bpc_per_block"]), rel=1e-5)
  # A fresh model predicts uniformly: log2(27) bits per character.
  assert saved["bpc"] < math.log2(27)
  lines = _read(saved["samples"]).splitlines()
  assert len(lines) == config.eval.num_samples
  assert all(
    len(line) == 32 and set(line) <= set(text.ALPHABET) for line in lines
  )


def test_eval_mode_repeats_the_final_evaluation(trained):
  from dblocks_jax.cli import evaluation

  config, workdir, result = trained
  again = evaluation.evaluate_checkpoint(config, str(workdir))
  assert again["bpc"] == pytest.approx(result["bpc"], rel=1e-5)


def test_sample_mode_writes_reproducible_text(trained):
  config, workdir, _ = trained
  first = sampling.sample_checkpoint(config, str(workdir))
  text_first = _read(first["txt"])
  second = sampling.sample_checkpoint(config, str(workdir))
  assert _read(second["txt"]) == text_first
  assert first["txt"].endswith(os.path.join("samples", "step_12.txt"))
  assert len(text_first.splitlines()) == config.sample.num_samples == 3


def test_memory_report_block_step_holds_a_third(config):
  config.memory.remat_policies = ()
  report = memory.memory_report(config)
  block, e2e = report["block_step"], report["e2e_step"]
  assert block["param_count"] == e2e["param_count"]
  assert block["step_param_count"] < e2e["step_param_count"]
  assert 0 < report["temp_ratio_block_over_e2e"] < 0.6


def test_paper_config_is_the_papers_model():
  c = mdm_text8.get_config()
  assert (c.model.num_layers, c.model.width, c.model.num_heads) == (12, 768, 12)
  assert (c.data.seq_len, c.batch_size, c.blocks.num_blocks) == (256, 256, 3)
  assert c.optimizer.learning_rate == 3e-4 and c.optimizer.weight_decay == 0.03
  assert c.optimizer.warmup_steps == 2000 * 3  # Baseline steps x B.
  assert c.blocks.gamma == 0.05 and c.diffusion.schedule == "linear"
  e2e = mdm_text8.get_config("e2e")
  assert (
    e2e.optimizer.warmup_steps == 2000 and e2e.total_steps * 3 == c.total_steps
  )


# ----- Bad input --------------------------------------------------------------


def _build_error(config, error=ConfigError):
  with pytest.raises(error) as info:
    families.get("mdm").build(config)
  return str(info.value)


def test_sequence_longer_than_the_table_names_both_fields(config):
  config.model.positions = "learned"  # Rotary positions have no table.
  config.data.seq_len = 64
  message = _build_error(config)
  assert "data.seq_len=64" in message and "model.max_seq_len=32" in message


def test_boundaries_that_miss_part_of_the_schedule_are_refused(config):
  config.blocks.partition = "explicit"
  config.blocks.boundaries = (1.0, 0.6, 0.3, 0.1)
  assert "blocks.boundaries=" in _build_error(config)
  assert "cover [0, 1]" in _build_error(config)


def test_gamma_outside_its_range_is_refused(config):
  config.blocks.gamma = 0.7
  assert "blocks.gamma=0.7" in _build_error(config)


def test_unknown_schedule_names_its_field(config):
  config.diffusion.schedule = "cubic"
  assert "diffusion.schedule='cubic'" in _build_error(config)


def test_a_continuous_sampler_is_refused_before_training(config):
  experiment = families.get("mdm").build(config)
  config.sampler.method = "euler"
  with pytest.raises(ConfigError, match="sampler.method='euler'"):
    families.get("mdm").evaluator(config, experiment, "/nonexistent")


def test_num_t_samples_must_split_over_the_blocks(config):
  experiment = families.get("mdm").build(config)
  config.eval.num_t_samples = 4
  with pytest.raises(ConfigError, match="eval.num_t_samples=4"):
    families.get("mdm").evaluator(config, experiment, "/nonexistent")


def test_missing_text8_file_says_where_to_get_it(config, tmp_path):
  config.data.name = "text8"
  config.data.dir = str(tmp_path)
  with pytest.raises(DataError, match="text8.zip"):
    families.get("mdm").train_data(config, {"block_0": (0, 16, (0, 1))})


def test_a_corpus_shorter_than_one_sequence_names_the_field(config, tmp_path):
  path = tmp_path / "text8"
  path.write_text("tiny corpus " * 40)  # 480 characters: test split 24.
  config.data.name = "text8"
  config.data.dir = str(path)
  experiment = families.get("mdm").build(config)
  with pytest.raises(DataError, match="data.seq_len=32"):
    families.get("mdm").evaluator(config, experiment, str(tmp_path))


def test_unknown_corpus_names_its_field(config):
  bad = copy.deepcopy(config)
  bad.data.name = "wikitext"
  with pytest.raises(ConfigError, match="data.name='wikitext'"):
    mdm_family.corpus_from_config(bad)
