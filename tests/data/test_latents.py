"""--mode=encode and latent datasets: a tiny random-weight SD-VAE over
synthetic images, then block-wise DiT training, sampling and FID (decoded
samples against the cropped source images) on its latents."""

import collections
import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs
from flax import nnx

from configs import dit_imagenet
from dblocks_jax import data, evaluate, families
from dblocks_jax.cli import encode, sampling
from dblocks_jax.data import latents, sources
from dblocks_jax.data.image_utils import center_crop
from dblocks_jax.data.options import DataOptions
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.evaluate import fid, generation, reference
from dblocks_jax.families import common, evaluation, train
from dblocks_jax.families import dit as dit_family
from dblocks_jax.models.pretrained import inception_weights, vae, vae_weights


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
  """(config, vae model) with a latent dataset written to config.data.dir."""
  needs("safetensors", "weights")
  root = tmp_path_factory.mktemp("latents")
  config = dit_imagenet.get_config("smoke")
  model = vae.AutoencoderKL(evaluation.vae_config(config), rngs=nnx.Rngs(0))
  config.encode.vae_weights = str(root / "vae.safetensors")
  vae_weights.save_vae(model, config.encode.vae_weights)
  config.data.dir = str(root / "latents")
  encode.encode_dataset(config)
  return config, model


def test_meta_and_shards(encoded):
  config, _ = encoded
  meta = latents.read_meta(config.data.dir)
  assert meta["latent_shape"] == [8, 8, 4] and meta["views"] == 2
  assert meta["splits"]["train"] == {
    "complete": True,
    "num_examples": 40,
    "shard_sizes": [16, 16, 8],
  }
  source = latents.LatentSource(config.data.dir, "train")
  assert len(source) == 40
  example = source[37]
  assert example["mean"].shape == (2, 8, 8, 4)
  assert example["mean"].dtype == np.float16
  assert np.all(example["std"] > 0)


def test_latents_are_the_vae_posterior_of_both_views(encoded):
  config, model = encoded
  images = DataOptions.from_mapping(config.encode.images)
  raw = sources.load_split(images, sources.TRAIN_FIELD)[21]
  crop = center_crop(raw["image"], 16).astype(np.float32)
  stored = latents.LatentSource(config.data.dir, "train")[21]
  assert stored["label"] == raw["label"]
  for view, pixels in enumerate((crop, crop[:, ::-1])):
    mean, logvar = model.encode(jnp.asarray(pixels[None]) / 127.5 - 1.0)
    np.testing.assert_allclose(
      stored["mean"][view], np.asarray(mean[0]), atol=2e-3, rtol=2e-3
    )
    np.testing.assert_allclose(
      stored["std"][view],
      np.exp(0.5 * np.asarray(logvar[0])),
      atol=2e-3,
      rtol=2e-3,
    )


def test_center_crop():
  wide = np.zeros((20, 40, 1), np.uint8)
  wide[:, 20:] = 255  # Right half white.
  out = center_crop(wide, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  assert out[:, 0].max() < 60 and out[:, -1].min() > 200  # Orientation kept.
  assert np.all(center_crop(np.full((64, 48, 3), 7, np.uint8), 16) == 7)


def test_encoding_resumes_at_the_missing_shard(encoded, tmp_path):
  config, _ = encoded
  config = copy.deepcopy(config)
  config.data.dir = str(tmp_path / "copy")
  encode.encode_dataset(config)
  label = latents.shard_path(config.data.dir, "train", 1, "label")
  kept = latents.shard_path(config.data.dir, "train", 0, "mean")
  before = np.load(label.replace("label", "mean"))
  stamp = os.stat(kept).st_mtime_ns
  os.remove(label)  # As if the run stopped while writing shard 1.
  meta_path = os.path.join(config.data.dir, latents.META)
  with open(meta_path) as f:
    meta = json.load(f)
  meta["splits"]["train"]["complete"] = False
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  with pytest.raises(DataError, match="no complete split 'train'"):
    latents.LatentSource(config.data.dir, "train")
  encode.encode_dataset(config)
  assert os.stat(kept).st_mtime_ns == stamp  # Complete shards are skipped.
  np.testing.assert_array_equal(np.load(label.replace("label", "mean")), before)
  assert latents.read_meta(config.data.dir)["splits"]["train"]["complete"]


def test_encoding_refuses_other_settings_in_the_same_dir(encoded):
  config, _ = encoded
  config = copy.deepcopy(config)
  config.encode.flip = False
  with pytest.raises(DataError, match="views"):
    encode.encode_dataset(config)


def test_encode_needs_its_fields(encoded):
  config, _ = encoded
  config = copy.deepcopy(config)
  config.data.dir = ""
  with pytest.raises(ConfigError, match="data.dir"):
    encode.encode_dataset(config)
  config.data.dir = "/tmp/x"
  config.encode.vae_weights = ""
  with pytest.raises(ConfigError, match="encode.vae_weights"):
    encode.encode_dataset(config)


def test_training_batches_sample_the_scaled_posterior(encoded):
  config, _ = encoded
  options = DataOptions.from_mapping(config.data)
  it = data.make_train_iterator(options, batch_size=40, seed=0)
  batch = next(it)
  assert batch["image"].shape == (40, 8, 8, 4)
  source = latents.LatentSource(config.data.dir, "train")
  by_label = {}
  for i in range(len(source)):
    by_label.setdefault(source[i]["label"], []).append(source[i])
  scale = 0.18215
  for image, label in zip(batch["image"], batch["label"], strict=True):
    z = image / scale
    # Within 6 std of one view's mean of an example of that label.
    assert any(
      np.all(np.abs(z - e["mean"][v]) <= 6 * e["std"][v] + 1e-3)
      for e in by_label[int(label)]
      for v in range(2)
    )


def test_wrong_latent_shape_is_a_clear_error(encoded, tmp_path):
  config, _ = encoded
  config = copy.deepcopy(config)
  config.data.image_shape = (16, 16, 4)
  with pytest.raises(DataError, match=r"data.image_shape=\[16, 16, 4\]"):
    train.train_and_evaluate(config, str(tmp_path))


def test_missing_latent_dataset_says_how_to_make_it(tmp_path):
  config = dit_imagenet.get_config("smoke")
  config.data.dir = str(tmp_path / "none")
  with pytest.raises(DataError, match="--mode=encode"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_train_and_sample_on_latents(encoded, tmp_path):
  config, _ = encoded
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["num_samples"] == 64
  sampled = sampling.sample_checkpoint(config, str(tmp_path))
  with np.load(sampled["npz"]) as saved:
    assert saved["images"].shape == (20, 16, 16, 3)  # Decoded pixels.


class RecordingFeatures:
  """A small feature network: per-channel means and deviations [b, 2 C] of
  the pixels it is given, which it keeps (in call order)."""

  description = {"feature_network": "recording"}

  def __init__(self):
    self.calls = []

  def __call__(self, pixels: np.ndarray) -> np.ndarray:
    self.calls.append(np.array(pixels))
    return np.concatenate([pixels.mean((1, 2)), pixels.std((1, 2))], -1)


def _reference_crops(config) -> np.ndarray:
  """uint8 [n, 16, 16, 3]: encode.images' reference split, cropped."""
  images = DataOptions.from_mapping(config.encode.images).replace(
    eval_split=config.eval.reference_split
  )
  source = sources.load_split(images, sources.EVAL_FIELD)
  return np.stack(
    [center_crop(source[i]["image"], 16) for i in range(len(source))]
  )


def test_fid_on_latents_decodes_samples_and_uses_image_references(
  encoded, tmp_path
):
  config, model = encoded
  config = copy.deepcopy(config)
  config.eval.num_samples = 40  # Batches of 32 and 8 (padded to 32).
  config.sampler.num_steps = 3  # One per block: a quicker compile.
  exp = families.get("dit").build(config)
  trainer = common.make_trainer(config, exp, None)
  sampler = common.sampler_from_config(config, exp.plan)
  sample_fn = dit_family.sample_fn(trainer, sampler)
  network = RecordingFeatures()
  cache = str(tmp_path / "cache")
  settings = evaluation.sample_settings(config, inference_steps=3)
  assert settings.seed == config.seed + 1 and settings.batch_size == 32
  pieces = dict(
    feature_network=network,
    sample_pixels=evaluation.sample_pixels(config),
    reference=evaluation.reference_images(config),
    cache_dir=cache,
  )
  assert pieces["sample_pixels"].decoder is not None
  result = evaluate.evaluate_samples(sample_fn, settings, **pieces)
  assert result["inference_steps"] == 3
  assert result["sampler"] == config.sampler.method
  # Reference statistics first: the source images, cropped as encoding does.
  first, *samples = network.calls
  crops = _reference_crops(config)
  assert len(crops) == 20
  np.testing.assert_array_equal(first, crops / np.float32(255))
  # Then the samples, decoded by the VAE: pixels [8 f, 8 f, 3], not latents.
  f = evaluation.vae_config(config).downsample_factor
  assert [s.shape[1:] for s in samples] == [(8 * f, 8 * f, 3)] * 2
  assert [len(s) for s in samples] == [32, 8]
  latent = generation.generate(
    sample_fn,
    generation.class_labels(40, config.data.num_classes),
    jax.random.key(config.seed + 1),
    batch_size=32,
  )
  decode = nnx.jit(lambda vae, z: vae.decode(z / 0.18215))
  decoded = decode(model, jnp.asarray(latent))
  expected = evaluate.to_pixels(decoded, (0.5,) * 3, (0.5,) * 3)
  got = np.round(np.concatenate(samples) * 255)
  assert np.abs(got - expected).max() <= 1  # Rounding of jit vs eager.
  assert np.isfinite(result["fid"]) and result["num_samples"] == 40
  assert result["dataset"] == "synthetic" and result["split"] == "test"
  assert result["reference_data"] == "encode"
  assert result["image_shape"] == [16, 16, 3]

  # Cached: a second evaluation scores only the samples.
  network.calls.clear()
  again = evaluate.evaluate_samples(sample_fn, settings, **pieces)
  assert len(network.calls) == 2 and again["fid"] == result["fid"]
  # The same images as a pixel dataset (uncropped) have another cache entry.
  as_pixels = copy.deepcopy(config)
  as_pixels.data = config.encode.images.copy_and_resolve_references()
  path = fid.cache_path(
    cache,
    dict(
      network.description, **evaluation.reference_images(as_pixels).description
    ),
  )
  assert path != result["reference_statistics"]
  assert evaluation.reference_kind(as_pixels) == "data"


def test_reference_images_take_explicit_options(encoded):
  """The library's reference images read no config: a dataset's options,
  the kind and the crop."""
  config, _ = encoded
  options = DataOptions.from_mapping(config.encode.images).replace(
    eval_split=config.eval.reference_split
  )
  images = reference.ReferenceImages("encode", options, crop=16)
  assert images.description == dict(
    dataset="synthetic",
    split="test",
    image_shape=[16, 16, 3],
    reference_data="encode",
    center_crop=16,
  )
  wired = evaluation.reference_images(config)
  assert (wired.kind, wired.options, wired.crop) == ("encode", options, 16)
  batches = list(images.pixel_batches(8))
  assert [len(b) for b in batches] == [8, 8, 4]
  np.testing.assert_array_equal(
    np.concatenate(batches), _reference_crops(config)
  )
  as_data = reference.ReferenceImages("data", options)
  assert as_data.description == dict(
    dataset="synthetic", split="test", image_shape=list(options.image_shape)
  )
  with pytest.raises(ValueError, match="crop"):
    reference.ReferenceImages("encode", options)


def test_reference_data_errors(encoded):
  config, _ = encoded
  config = copy.deepcopy(config)
  config.eval.reference_data = "data"
  with pytest.raises(ConfigError, match="eval.reference_data='data'"):
    evaluation.reference_kind(config)
  config.eval.reference_data = "pixels"
  with pytest.raises(ConfigError, match="eval.reference_data='pixels'"):
    evaluation.reference_kind(config)
  config.eval.reference_data = "encode"
  config.encode.image_size = 32
  with pytest.raises(ConfigError, match="encode.image_size"):
    evaluation.reference_images(config)


def test_missing_reference_images_say_how_to_get_them(encoded, tmp_path):
  config, _ = encoded
  config = copy.deepcopy(config)
  config.encode.images.name = "imagenet2012"
  config.encode.images.dir = str(tmp_path / "tfds")
  config.eval.reference_split = "validation"
  network = RecordingFeatures()
  cache = str(tmp_path / "cache")
  images = evaluation.reference_images(config)
  with pytest.raises(DataError, match="tfds build imagenet2012") as info:
    generation.check_reference(network, images, cache)
  assert "eval.reference_split='validation'" in str(info.value)
  # Cached statistics need no images.
  description = dict(network.description, **images.description)
  path = fid.cache_path(cache, description)
  os.makedirs(cache)
  np.savez(path, mean=np.zeros(6), cov=np.eye(6))
  generation.check_reference(network, images, cache)


class _TinyInception(nnx.Module):
  """A stand-in for the FID Inception: per-channel means and deviations
  [b, 6] of its (299 x 299) input."""

  def __init__(self):
    self.scale = nnx.Param(jnp.ones(3))

  def pool_features(self, x):
    return jnp.concatenate([x.mean((1, 2)) * self.scale, x.std((1, 2))], -1)


def test_fid_evaluator_loads_its_networks_at_the_first_evaluation(
  encoded, tmp_path, monkeypatch
):
  """Making the evaluator checks the weight files and loads nothing; the
  first evaluation loads Inception and the VAE, and each evaluation ends
  with both off the device (the next one reuses a host copy)."""
  config, _ = encoded
  config = copy.deepcopy(config)
  config.eval.num_samples = 8
  config.sampler.num_steps = 3
  config.eval.feature_network = "inception"
  config.eval.inception_weights = str(tmp_path / "inception.npz")
  np.savez(config.eval.inception_weights, w=np.zeros(4, np.float32))
  loads = collections.Counter()
  load_vae = vae_weights.load_vae

  def counted_vae(*args):
    loads["vae"] += 1
    return load_vae(*args)

  def tiny_inception(path):
    assert path == config.eval.inception_weights
    loads["inception"] += 1
    return _TinyInception()

  monkeypatch.setattr(vae_weights, "load_vae", counted_vae)
  monkeypatch.setattr(inception_weights, "load_inception", tiny_inception)
  family = families.get("dit")
  exp = family.build(config)
  trainer = common.make_trainer(config, exp, None)
  evaluator = family.evaluator(config, exp, str(tmp_path))
  features, decoder = evaluator.feature_network, evaluator.sample_pixels.decoder
  assert not loads and features._network is None and decoder._decode is None
  result = evaluator(trainer)
  assert loads == {"vae": 1, "inception": 1} and np.isfinite(result["fid"])
  assert not features.params.on_device and not decoder.params.on_device
  again = evaluator(trainer)
  assert loads == {"vae": 1, "inception": 1} and again["fid"] == result["fid"]


def test_missing_weight_files_fail_before_training(encoded, tmp_path):
  config, _ = encoded
  config = copy.deepcopy(config)
  config.eval.feature_network = "inception"
  config.eval.inception_weights = str(tmp_path / "missing.pth")
  with pytest.raises(ConfigError) as info:
    train.train_and_evaluate(config, str(tmp_path / "a"))
  message = str(info.value)
  assert "--config.eval.inception_weights=PATH" in message
  assert "releases/download/fid_weights" in message and "\n" not in message
  assert not (tmp_path / "a" / "checkpoints").exists()  # Before any step.
  config.eval.inception_weights = str(tmp_path / "inception.npz")
  np.savez(config.eval.inception_weights, w=np.zeros(4, np.float32))
  config.encode.vae_weights = str(tmp_path / "missing.safetensors")
  with pytest.raises(ConfigError) as info:
    train.train_and_evaluate(config, str(tmp_path / "b"))
  message = str(info.value)
  assert "--config.encode.vae_weights=" in message
  assert "huggingface-cli download" in message and "\n" not in message
  assert not (tmp_path / "b" / "checkpoints").exists()
