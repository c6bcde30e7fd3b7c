"""Block-wise DiT generation: loss, routed sampling, FID, sample mode."""

import dataclasses
import itertools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from configs import dit_fashion_mnist, vit_fashion_mnist
from dblocks_jax import data, diffusion, families
from dblocks_jax.blockwise import inference
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.cli import evaluation, memory, sampling
from dblocks_jax.data.info import normalisation
from dblocks_jax.errors import ConfigError
from dblocks_jax.evaluate import features, fid
from dblocks_jax.families import common, runs, train
from dblocks_jax.families import evaluation as wiring
from dblocks_jax.tasks import DiffusionGeneration, Sampler


@pytest.fixture
def dit_config():
  return dit_fashion_mnist.get_config("smoke")


def _build(config):
  return families.get("dit").build(config)


def _parts(exp, block=0):
  return {**exp.model.shared, **exp.model.blocks[block]}


def test_loss_of_a_fresh_model_is_the_skip_error(dit_config):
  """F = 0 at init, so D = c_skip z and the loss has a closed form."""
  with dit_config.unlocked():
    dit_config.model.label_dropout = 0.0
    dit_config.sampler.guidance_scale = 1.0
  exp = _build(dit_config)
  shape = tuple(dit_config.data.image_shape)
  images = jax.random.uniform(jax.random.key(0), (4, *shape), minval=-1)
  batch = {"image": images, "label": jnp.arange(4)}
  sigma = jnp.array([0.01, 0.3, 1.0, 20.0])
  key = jax.random.key(5)
  loss, metrics_ = exp.task.loss(_parts(exp), batch, sigma, key)
  noise_key, _ = jax.random.split(key)
  z = images + sigma[:, None, None, None] * jax.random.normal(
    noise_key, images.shape
  )
  denoised = diffusion.c_skip(sigma)[:, None, None, None] * z
  mse = jnp.mean((denoised - images) ** 2, axis=(1, 2, 3))
  expected = jnp.mean(diffusion.loss_weight(sigma) * mse)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics_["mse"], jnp.mean(mse), rtol=1e-5)


def test_label_dropout_uses_the_null_class():
  seen = []

  def spy(parts, z, sigma, labels, *, sigma_data):
    seen.append(labels)
    return z

  objective = DiffusionGeneration(
    num_classes=10, sample_shape=(2, 2, 1), denoise=spy, label_dropout=0.3
  )
  batch = {"image": jnp.zeros((4000, 2, 2, 1)), "label": jnp.zeros(4000, int)}
  objective.loss({}, batch, jnp.ones(4000), jax.random.key(1))
  labels = np.asarray(seen[0])
  assert set(np.unique(labels)) == {0, 10}
  assert abs(np.mean(labels == 10) - 0.3) < 0.03
  objective.loss({}, batch, jnp.ones(4000), jax.random.key(1), train=False)
  assert not np.any(np.asarray(seen[1]) == 10)


def _trainer(config):
  exp = _build(config)
  return exp, common.make_trainer(config, exp, None)


def test_sampling_is_reproducible_and_free_of_b(dit_config):
  with dit_config.unlocked():
    dit_config.sampler.num_steps = 7  # Not a multiple of B = 3.
  exp, trainer = _trainer(dit_config)
  sampler = Sampler.of(exp.plan, 7)
  assert sorted(set(sampler.blocks.tolist())) == [0, 1, 2]
  labels = {"label": jnp.array([0, 3, 10])}
  a = trainer.predict(labels, key=jax.random.key(0), sampler=sampler)
  b = trainer.predict(labels, key=jax.random.key(0), sampler=sampler)
  c = trainer.predict(labels, key=jax.random.key(1), sampler=sampler)
  assert a.shape == (3, *dit_config.data.image_shape)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))


def test_each_step_calls_only_its_routed_block(dit_config):
  exp = _build(dit_config)
  sigmas = diffusion.sigma_grid("cdf", 9, 0.002, 80.0, -1.2, 1.2, 7.0)
  blocks = exp.plan.route(sigmas)
  calls = []

  def parts_for_block(b):
    calls.append(b)
    return _parts(exp, b)

  b = [int(x) for x in blocks]
  heun_pairs = list(zip(b[:-1], b[1:], strict=True))
  for method, expected in (
    ("euler", [k for k, _ in itertools.groupby(b[:-1])]),
    ("heun", [x for k, _ in itertools.groupby(heun_pairs) for x in k]),
  ):
    calls.clear()
    exp.task.predict(
      parts_for_block,
      {"label": jnp.array([1, 2])},
      jax.random.key(0),
      sampler=Sampler(sigmas, blocks, method),
    )
    # Consecutive steps in one block are one scanned body, which asks for
    # its block once (Heun: the blocks of both its grid points), then the
    # final evaluation at sigma_min.
    assert calls == expected + [b[-1]], method
  assert sorted(set(blocks)) == [0, 1, 2]


def test_guidance_needs_label_dropout(dit_config):
  with dit_config.unlocked():
    dit_config.model.label_dropout = 0.0
  with pytest.raises(ConfigError, match="model.label_dropout=0"):
    _build(dit_config)
  dit_config.sampler.guidance_scale = 1.0
  _build(dit_config)


def test_guidance_combines_conditional_and_null(dit_config):
  """With the label embedder as the only difference, D_guided follows
  uncond + s (cond - uncond) on a one-step grid."""
  exp = _build(dit_config)
  parts = _parts(exp)
  head = parts["readout"].linear.kernel
  head[...] = jax.random.normal(jax.random.key(2), head.shape) * 0.1
  shape = tuple(dit_config.data.image_shape)
  sigmas = np.array([2.0])
  labels = jnp.array([4])

  del shape

  def run(scale, labels):
    task = dataclasses.replace(exp.task, guidance_scale=scale)
    return task.predict(
      lambda b: parts,
      {"label": labels},
      jax.random.key(0),
      sampler=Sampler(sigmas, np.array([0])),
    )

  cond, uncond = run(1.0, labels), run(1.0, jnp.array([10]))
  guided = run(2.0, labels)
  np.testing.assert_allclose(guided, uncond + 2.0 * (cond - uncond), atol=1e-5)


def _denoising_errors(exp, trainer, batch):
  """MSE of each block at the median sigma of its training distribution
  (the log-normal restricted to its range), with fixed noise."""
  parts_for_block = inference.parts_for_block_fn(
    trainer.graphdefs, trainer.arrays()
  )
  errors = []
  for b, (lo, hi) in enumerate(exp.plan.train_ranges):
    q = (
      diffusion.lognormal_cdf(lo, -1.2, 1.2)
      + diffusion.lognormal_cdf(hi, -1.2, 1.2)
    ) / 2
    median = diffusion.lognormal_quantile(q, -1.2, 1.2)
    sigma = jnp.full((batch["label"].shape[0],), median)
    _, m = exp.task.loss(
      parts_for_block(b), batch, sigma, jax.random.key(9), train=False
    )
    errors.append(float(m["mse"]))
  return np.array(errors)


def test_block_wise_dit_learns(dit_config, tmp_path):
  """Every block denoises its own range better after training."""
  with dit_config.unlocked():
    dit_config.total_steps = 240
    dit_config.checkpoint_every_steps = 1000
    dit_config.optimizer.learning_rate = 2e-3
    dit_config.eval.num_samples = 8
  options = common.data_options(dit_config)
  batch = next(iter(data.make_eval_batches(options, batch_size=64)))
  batch = {"image": jnp.asarray(batch["image"]), "label": batch["label"]}
  exp, fresh = _trainer(dit_config)
  before = _denoising_errors(exp, fresh, batch)
  train.train_and_evaluate(dit_config, str(tmp_path))
  _, _, trained = runs.restore_run(dit_config, str(tmp_path))
  after = _denoising_errors(exp, trained, batch)
  # The lowest range starts closest to optimal (D = c_skip z ~ z).
  assert np.all(after[:2] < 0.65 * before[:2]), (before, after)
  assert after[2] < 0.9 * before[2], (before, after)


def _trained_classifier(tmp_path, image_shape):
  config = vit_fashion_mnist.get_config("smoke,e2e")
  config.data.image_shape = config.data.synthetic_image_shape = image_shape
  config.model.patch_size = 4
  config.total_steps = 6
  workdir = str(tmp_path / "classifier")
  train.train_and_evaluate(config, workdir)
  return workdir


def test_fid_with_a_trained_classifier(dit_config, tmp_path):
  classifier = _trained_classifier(tmp_path, dit_config.data.image_shape)
  dit_config.eval.feature_network = "classifier"
  dit_config.eval.classifier_workdir = classifier
  workdir = tmp_path / "dit"
  result = train.train_and_evaluate(dit_config, str(workdir))
  assert result["num_samples"] == 64 and result["inference_steps"] == 6
  assert np.isfinite(result["fid"]) and result["fid"] > 0
  assert result["feature_network"] == "classifier"
  assert result["split"] == "test"
  cached = result["reference_statistics"]
  assert os.path.exists(cached)
  stamp = os.stat(cached).st_mtime_ns
  again = evaluation.evaluate_checkpoint(dit_config, str(workdir))
  assert os.stat(cached).st_mtime_ns == stamp  # Computed once, then reused.
  assert again["fid"] == pytest.approx(result["fid"], rel=1e-6)
  assert json.loads((workdir / "eval.json").read_text())["fid"] == again["fid"]


def test_the_classifier_loads_at_its_first_call(tmp_path):
  classifier = _trained_classifier(tmp_path, (16, 16, 1))
  network = wiring.classifier_features(classifier)
  assert isinstance(network, features.ClassifierFeatures)
  assert network.params.loads == 0 and network.step == 6
  assert network.description == {
    "feature_network": "classifier",
    "classifier_workdir": os.path.abspath(classifier),
    "classifier_step": 6,
    "classifier_data": "synthetic",
  }
  pixels = np.random.default_rng(0).uniform(size=(3, 16, 16, 1))
  first = network(pixels)
  network.release()
  assert not network.params.on_device
  np.testing.assert_array_equal(network(pixels), first)  # The host copy.
  assert network.params.loads == 1 and first.shape[0] == 3
  # The features are the restored classifier's head input, of the pixels
  # normalised as in training: its head maps them to its logits.
  config = runs.read_run_config(classifier)
  _, _, trainer = runs.restore_run(config, classifier)
  shared = parts_lib.merge(trainer.graphdefs.shared, trainer.arrays()["shared"])
  mean, std = normalisation(common.data_options(config))
  inputs = ((pixels - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
  logits = trainer.predict({"image": inputs})
  trainer.close()
  head = shared["model"].head(jnp.asarray(first))
  np.testing.assert_allclose(head, logits, rtol=1e-4, atol=1e-4)
  shutil.rmtree(os.path.join(classifier, "checkpoints"))
  with pytest.raises(ConfigError, match="has no checkpoint"):
    wiring.classifier_features(classifier)


def test_only_a_run_whose_task_gives_features_is_a_classifier(tmp_path):
  """A DiT run is refused (its task has no `features`), before any
  checkpoint is looked for."""
  config = dit_fashion_mnist.get_config("smoke,e2e")
  workdir = str(tmp_path / "dit")
  runs.write_config(workdir, config, {})
  with pytest.raises(ConfigError, match="end-to-end ViT classifier"):
    wiring.classifier_features(workdir)


def test_fid_feature_network_errors(dit_config, tmp_path):
  dit_config.eval.feature_network = "classifier"
  with pytest.raises(ConfigError, match="eval.classifier_workdir"):
    train.train_and_evaluate(dit_config, str(tmp_path / "a"))
  classifier = _trained_classifier(tmp_path, (8, 8, 1))
  dit_config.eval.classifier_workdir = classifier
  with pytest.raises(ConfigError, match=r"\[8, 8, 1\]"):
    train.train_and_evaluate(dit_config, str(tmp_path / "b"))
  dit_config.eval.feature_network = "inceptionv9"
  with pytest.raises(ConfigError, match="eval.feature_network"):
    train.train_and_evaluate(dit_config, str(tmp_path / "c"))


def test_sample_mode_writes_png_and_npz(dit_config, tmp_path):
  train.train_and_evaluate(dit_config, str(tmp_path))
  result = sampling.sample_checkpoint(dit_config, str(tmp_path))
  with np.load(result["npz"]) as saved:
    images, labels = saved["images"], saved["labels"]
    assert int(saved["inference_steps"]) == 6
  assert images.dtype == np.uint8 and images.shape == (20, 16, 16, 1)
  np.testing.assert_array_equal(labels, np.arange(20) % 10)
  grid = np.asarray(Image.open(result["png"]))
  assert grid.shape == (2 * 18 + 2, 10 * 18 + 2)  # 2 rows x 10 classes.
  np.testing.assert_array_equal(grid[2:18, 2:18], images[0, ..., 0])
  again = sampling.sample_checkpoint(dit_config, str(tmp_path))
  with np.load(again["npz"]) as saved:
    np.testing.assert_array_equal(saved["images"], images)


def test_sample_mode_refuses_a_classifier(trained_smoke):
  config, workdir, _ = trained_smoke
  with pytest.raises(ConfigError, match="--mode=sample needs a generator"):
    sampling.sample_checkpoint(config, str(workdir))


def test_memory_report_of_a_dit(dit_config):
  dit_config.memory.remat_policies = ()
  report = memory.memory_report(dit_config)
  block, e2e = report["block_step"], report["e2e_step"]
  assert block["param_count"] == e2e["param_count"]
  assert block["step_param_count"] < e2e["step_param_count"]
  assert 0 < report["temp_ratio_block_over_e2e"] < 1


def _gaussian(rng, dim):
  a = rng.normal(size=(dim, dim))
  return rng.normal(size=dim), a @ a.T + 0.1 * np.eye(dim)


def test_frechet_distance_against_scipy():
  rng = np.random.default_rng(0)
  for dim in (1, 3, 16):
    (mu1, cov1), (mu2, cov2) = _gaussian(rng, dim), _gaussian(rng, dim)
    root = scipy.linalg.sqrtm(cov1 @ cov2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * root)
    assert fid.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(
      expected, rel=1e-6
    )


def test_frechet_distance_known_values():
  # Diagonal covariances: sum (sqrt a - sqrt b)^2 + |mu1 - mu2|^2.
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
  mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
  expected = 5.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
  got = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected)
  assert fid.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == (
    pytest.approx(0.0, abs=1e-9)
  )
  samples = np.random.default_rng(1).normal(size=(20000, 2)) * [1.0, 2.0]
  mean, cov = fid.statistics(samples)
  assert fid.frechet_distance(
    mean, cov, np.zeros(2), np.diag([1.0, 4.0])
  ) == pytest.approx(0.0, abs=2e-3)


def test_running_statistics_equal_the_batch_statistics():
  # Large mean, uneven batches: the shifted sums keep float64 precision.
  rng = np.random.default_rng(2)
  features = rng.normal(size=(1003, 5)) * [1.0, 2.0, 0.5, 3.0, 1.0] + 1e4
  features[:, 1] += 0.3 * features[:, 0]
  running = fid.RunningStatistics()
  for start, stop in [(0, 7), (7, 500), (500, 501), (501, 1003)]:
    running.update(features[start:stop])
  assert running.count == 1003
  mean, cov = running.result()
  np.testing.assert_allclose(mean, features.mean(0), rtol=1e-12)
  np.testing.assert_allclose(
    cov, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-9
  )
  single = fid.RunningStatistics()
  single.update(features[:1])
  with pytest.raises(ValueError, match="at least 2"):
    single.result()
