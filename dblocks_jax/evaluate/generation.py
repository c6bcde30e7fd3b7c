"""Sampling a trained generator: routed sampler, pixels, image grids."""

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image

from dblocks_jax import data
from dblocks_jax.data.info import normalisation
from dblocks_jax.evaluate import fid
from dblocks_jax.evaluate.routing import parts_for_block_fn, sampler_grid


def make_sample_fn(experiment, graphdefs, config):
  """A jitted `sample(state, labels, key) -> [batch, H, W, C]`.

  Each grid point calls only its routed block; the grid comes from the config
  (`sampler.num_steps`, any number, free of B), never from the checkpoint.
  """
  sigmas, blocks = sampler_grid(experiment, config)
  s = config.sampler
  experiment.objective.check_guidance(s.guidance_scale)
  shape = tuple(config.data.image_shape)

  def sample(state, labels, key):
    return experiment.objective.sample(
      parts_for_block_fn(graphdefs, state),
      labels,
      key,
      shape=shape,
      sigmas=sigmas,
      blocks=blocks,
      method=s.method,
      guidance_scale=s.guidance_scale,
    )

  return jax.jit(sample)


def class_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """[num_samples] labels cycling through the classes (balanced)."""
  return np.arange(num_samples, dtype=np.int32) % num_classes


def generate(
  sample_fn,
  state,
  labels: np.ndarray,
  key: jax.Array,
  *,
  batch_size: int,
  progress_every: int = 0,
) -> np.ndarray:
  """Samples one image per label, in batches of `batch_size`.

  The last batch is padded to `batch_size` (one compile) and trimmed. Batch i
  uses `fold_in(key, i)`, so a fixed key gives the same images.

  Returns:
    [len(labels), H, W, C] float32 in the model's data space.
  """
  out = []
  num_batches = -(-len(labels) // batch_size)
  for i in range(num_batches):
    chunk = labels[i * batch_size : (i + 1) * batch_size]
    padded = np.pad(chunk, (0, batch_size - len(chunk)))
    images = sample_fn(state, jnp.asarray(padded), jax.random.fold_in(key, i))
    out.append(np.asarray(images)[: len(chunk)])
    if progress_every and (i + 1) % progress_every == 0:
      logging.info("Sampled %d/%d batches.", i + 1, num_batches)
  return np.concatenate(out)


def to_pixels(images: np.ndarray, mean, std) -> np.ndarray:
  """Data-space images -> uint8 pixels: clip(255 (x std + mean))."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  unit = np.asarray(images, np.float32) * std + mean
  return np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)


def image_grid(pixels: np.ndarray, columns: int, padding: int = 2):
  """[n, H, W, C] uint8 -> one [rows (H+pad), columns (W+pad), C] image."""
  n, h, w, c = pixels.shape
  rows = -(-n // columns)
  grid = np.zeros(
    (rows * (h + padding) + padding, columns * (w + padding) + padding, c),
    np.uint8,
  )
  for i in range(n):
    r, col = divmod(i, columns)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top : top + h, left : left + w] = pixels[i]
  return grid


def save_png(grid: np.ndarray, path: str) -> None:
  mode = "L" if grid.shape[-1] == 1 else "RGB"
  Image.fromarray(grid[..., 0] if mode == "L" else grid, mode).save(path)


def _features_of(feature_network, pixels: np.ndarray, batch_size: int):
  """uint8 pixels [n, H, W, C] -> features [n, d], in batches."""
  out = []
  for start in range(0, len(pixels), batch_size):
    chunk = pixels[start : start + batch_size].astype(np.float32) / 255.0
    out.append(feature_network(chunk))
  return np.concatenate(out)


def reference_pixels(data_config, batch_size: int, mean, std) -> np.ndarray:
  """The reference split's images as uint8 pixels [n, H, W, C]."""
  out = []
  for batch in data.make_eval_batches(data_config, batch_size=batch_size):
    mask = np.asarray(batch["mask"], bool)
    out.append(to_pixels(batch["image"][mask], mean, std))
  return np.concatenate(out)


def frechet_evaluation(
  pixels: np.ndarray, feature_network, config, cache_dir: str
) -> dict:
  """FID of uint8 samples against `config.eval.reference_split` of the data.

  Reference statistics are computed once per feature network, dataset and
  split, and cached in `cache_dir`.
  """
  e = config.eval
  reference_data = config.data.copy_and_resolve_references()
  with reference_data.unlocked():
    reference_data.eval_split = e.reference_split
  mean, std = normalisation(reference_data)
  description = dict(
    feature_network.description,
    dataset=config.data.name,
    split=e.reference_split,
    image_shape=list(config.data.image_shape),
  )

  def compute():
    reference = reference_pixels(
      reference_data, config.eval_batch_size, mean, std
    )
    return fid.statistics(
      _features_of(feature_network, reference, config.eval_batch_size)
    )

  ref_mean, ref_cov, path = fid.cached_reference_statistics(
    cache_dir, description, compute
  )
  sample_mean, sample_cov = fid.statistics(
    _features_of(feature_network, pixels, config.eval_batch_size)
  )
  return {
    "fid": fid.frechet_distance(sample_mean, sample_cov, ref_mean, ref_cov),
    "reference_statistics": path,
    **description,
  }


def evaluate_samples(
  experiment, sample_fn, feature_network, state, config, *, cache_dir
):
  """Samples `eval.num_samples` images (balanced classes) and scores them.

  Returns:
    eval.json fields: the number of samples, the sampler, and with a feature
    network the FID and what it was measured against.
  """
  e, s = config.eval, config.sampler
  labels = class_labels(e.num_samples, config.data.num_classes)
  images = generate(
    sample_fn,
    state,
    labels,
    jax.random.key(config.seed + 1),
    batch_size=config.eval_batch_size,
    progress_every=10,
  )
  result = {
    "num_samples": int(len(images)),
    "inference_steps": int(s.num_steps or experiment.plan.num_blocks),
    "sampler": s.method,
    "guidance_scale": float(s.guidance_scale),
  }
  if feature_network is not None:
    mean, std = normalisation(config.data)
    pixels = to_pixels(images, mean, std)
    result.update(
      frechet_evaluation(pixels, feature_network, config, cache_dir)
    )
  return result


def decode_latents(config, latents: np.ndarray, batch_size: int) -> np.ndarray:
  """Scaled latents [n, h, w, c] -> images [n, H, W, 3] in [-1, 1].

  Uses the VAE of `encode.vae` with the weights of `encode.vae_weights`, or
  those recorded in the latent dataset's meta.json when that is empty.
  """
  from dblocks_jax.data import latents as latents_lib
  from dblocks_jax.encode import vae_config
  from dblocks_jax.models import vae_weights

  meta = latents_lib.read_meta(config.data.dir)
  weights = config.encode.vae_weights or meta["vae"]["weights"]
  model = vae_weights.load_vae(weights, vae_config(config))
  graphdef, state = nnx.split(model)

  @jax.jit
  def decode(state, z):
    return nnx.merge(graphdef, state).decode(z / meta["scaling_factor"])

  out = []
  for start in range(0, len(latents), batch_size):
    out.append(
      np.asarray(
        decode(state, jnp.asarray(latents[start : start + batch_size]))
      )
    )
  return np.concatenate(out)
