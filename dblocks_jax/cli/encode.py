"""`--mode=encode`: an image dataset -> a latent dataset, once.

Reads `encode.images` (any image dataset of `dblocks_jax.data`), centre-crops
each image to `encode.image_size` (ADM's preprocessing, as DiT's: halve with
a box filter while the short side is at least twice the size, bicubic resize,
centre crop), encodes it (and its mirror with `encode.flip`) with the SD VAE
loaded from `encode.vae_weights`, and writes the posterior mean and standard
deviation in shards under `data.dir` (layout in `data/latents.py`).

Resumable: a shard is written to temporary files and renamed, its label file
last; a re-run skips complete shards and the split is marked complete in
meta.json only when all its shards exist. Progress (examples/s, ETA) is
logged per batch window.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from dblocks_jax.data import latents, sources
from dblocks_jax.data.image_utils import center_crop
from dblocks_jax.data.options import DataOptions
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.families.evaluation import vae_config
from dblocks_jax.models.pretrained import vae as vae_lib
from dblocks_jax.models.pretrained import vae_weights
from dblocks_jax.training import metrics


def _meta(config, vae: vae_lib.VAEConfig, num_classes: int) -> dict:
  e = config.encode
  size = int(e.image_size)
  if size % vae.downsample_factor:
    raise ConfigError(
      f"encode.image_size={size} is not divisible by the VAE's downsampling"
      f" factor {vae.downsample_factor}."
    )
  side = size // vae.downsample_factor
  return {
    "format": latents.FORMAT,
    "latent_shape": [side, side, vae.latent_channels],
    "num_classes": num_classes,
    "scaling_factor": vae.scaling_factor,
    "views": 2 if e.flip else 1,
    "image_size": size,
    "vae": {
      "weights": os.path.abspath(e.vae_weights),
      "block_out_channels": list(vae.block_out_channels),
      "layers_per_block": vae.layers_per_block,
      "norm_num_groups": vae.norm_num_groups,
      "latent_channels": vae.latent_channels,
    },
    "source": {"name": e.images.name, "dir": e.images.dir},
  }


def _check_or_write_meta(directory: str, meta: dict) -> dict:
  """Starts meta.json, or checks that a resumed run writes the same data."""
  path = os.path.join(directory, latents.META)
  if os.path.exists(path):
    existing = latents.read_meta(directory)
    fixed = {k: v for k, v in existing.items() if k != "splits"}
    if fixed != meta:
      changed = sorted(k for k in meta if fixed.get(k) != meta[k])
      raise DataError(
        f"{directory} already holds a latent dataset made with other"
        f" settings ({', '.join(changed)}); use another data.dir."
      )
    return existing
  os.makedirs(directory, exist_ok=True)
  return dict(meta, splits={})


def _write_meta(directory: str, meta: dict) -> None:
  path = os.path.join(directory, latents.META)
  with open(path + ".tmp", "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(path + ".tmp", path)


def _save(path: str, array: np.ndarray) -> None:
  tmp = path[: -len(".npy")] + ".tmp.npy"
  np.save(tmp, array)
  os.replace(tmp, path)


def encode_dataset(config: ml_collections.ConfigDict) -> dict:
  """Encodes `encode.splits` of `encode.images` into `data.dir`.

  Returns:
    The meta.json contents.
  """
  e, directory = config.encode, config.data.dir
  if not directory:
    raise ConfigError(
      "--mode=encode writes the latent dataset to data.dir; set"
      " --config.data.dir=DIR."
    )
  if not e.vae_weights:
    raise ConfigError(
      "--mode=encode needs encode.vae_weights: the path of the SD VAE's"
      " diffusion_pytorch_model.safetensors (stabilityai/sd-vae-ft-ema)."
    )
  vae = vae_config(config)
  model = vae_weights.load_vae(e.vae_weights, vae)
  graphdef, state = nnx.split(model)

  @jax.jit
  def encode(state, pixels):
    mean, logvar = nnx.merge(graphdef, state).encode(pixels / 127.5 - 1.0)
    return mean.astype(jnp.float16), jnp.exp(0.5 * logvar).astype(jnp.float16)

  num_classes = sources.describe(DataOptions.from_mapping(e.images)).num_classes
  meta = _check_or_write_meta(directory, _meta(config, vae, num_classes))
  _write_meta(directory, meta)
  size, batch_size = int(e.image_size), int(e.batch_size)
  for split in e.splits:
    images = DataOptions.from_mapping(e.images).replace(train_split=split)
    source = sources.load_split(images, sources.TRAIN_FIELD)
    n, shard_size = len(source), int(e.shard_size)
    shard_sizes = [
      min(shard_size, n - start) for start in range(0, n, shard_size)
    ]
    os.makedirs(os.path.join(directory, split), exist_ok=True)
    progress = metrics.Progress(n)
    done = 0
    for index, count in enumerate(shard_sizes):
      start = index * shard_size
      done += count
      if os.path.exists(latents.shard_path(directory, split, index, "label")):
        continue  # Complete from an earlier run.
      progress.update(done - count)  # Starts the clock (no-op if running).
      means, stds, labels = [], [], []
      for b in range(start, start + count, batch_size):
        stop = min(b + batch_size, start + count)
        examples = [source[i] for i in range(b, stop)]
        crops = np.stack([center_crop(x["image"], size) for x in examples])
        views = [crops, crops[:, :, ::-1]] if e.flip else [crops]
        pixels = np.concatenate(views).astype(np.float32)
        padded = np.zeros((len(views) * batch_size, size, size, 3), np.float32)
        padded[: len(pixels)] = pixels
        mean, std = (np.asarray(a) for a in encode(state, jnp.asarray(padded)))
        k = stop - b
        take = np.concatenate([np.arange(k) + v * k for v in range(len(views))])
        shape = (len(views), k, *mean.shape[1:])
        means.append(mean[take].reshape(shape).swapaxes(0, 1))
        stds.append(std[take].reshape(shape).swapaxes(0, 1))
        labels.extend(int(x["label"]) for x in examples)
      _save(
        latents.shard_path(directory, split, index, "mean"),
        np.concatenate(means),
      )
      _save(
        latents.shard_path(directory, split, index, "std"), np.concatenate(stds)
      )
      _save(
        latents.shard_path(directory, split, index, "label"),
        np.asarray(labels, np.int32),
      )
      update = progress.update(done)
      logging.info(
        "encode %s: shard %d/%d, %d/%d examples, %.1f examples/s, ETA %s",
        split,
        index + 1,
        len(shard_sizes),
        done,
        n,
        update["steps_per_sec"] or float("nan"),
        metrics.format_duration(update["eta_seconds"]),
      )
    meta["splits"][split] = {
      "complete": True,
      "num_examples": n,
      "shard_sizes": shard_sizes,
    }
    _write_meta(directory, meta)
  return meta
