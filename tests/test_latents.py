"""--mode=encode and latent datasets: a tiny random-weight SD-VAE over
synthetic images, then block-wise DiT training and sampling on its latents."""

import copy
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import dit_imagenet
from dblocks_jax import data, encode, train
from dblocks_jax.data import latents, sources
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.models import vae, vae_weights


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
  """(config, vae model) with a latent dataset written to config.data.dir."""
  root = tmp_path_factory.mktemp("latents")
  config = dit_imagenet.get_config("smoke")
  model = vae.AutoencoderKL(encode.vae_config(config), rngs=nnx.Rngs(0))
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
  images = config.encode.images.copy_and_resolve_references()
  raw = sources.load_split(images, sources.TRAIN_FIELD)[21]
  crop = encode.center_crop(raw["image"], 16).astype(np.float32)
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
  out = encode.center_crop(wide, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  assert out[:, 0].max() < 60 and out[:, -1].min() > 200  # Orientation kept.
  assert np.all(encode.center_crop(np.full((64, 48, 3), 7, np.uint8), 16) == 7)


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
  it = data.make_train_iterator(config.data, batch_size=40, seed=0)
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
  sampled = train.sample_checkpoint(config, str(tmp_path))
  with np.load(sampled["npz"]) as saved:
    assert saved["images"].shape == (20, 16, 16, 3)  # Decoded pixels.
