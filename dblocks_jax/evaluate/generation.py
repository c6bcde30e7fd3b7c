"""Sampling a trained generator: routed sampler, image grids, FID."""

import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from dblocks_jax.evaluate import fid, pixels, reference


def class_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """[num_samples] labels cycling through the classes (balanced)."""
  return np.arange(num_samples, dtype=np.int32) % num_classes


def generate(
  sample_fn,
  labels: np.ndarray,
  key: jax.Array,
  *,
  batch_size: int,
  progress_every: int = 0,
) -> np.ndarray:
  """Samples one image per label, in batches of `batch_size`.

  `sample_fn(labels [b], key) -> [b, H, W, C]` is a model's routed sampler
  (e.g. `Trainer.predict` with {"label": labels}).

  The last batch is padded to `batch_size` (one compile) and trimmed. Batch i
  uses `fold_in(key, i)`, so a fixed key gives the same images.

  Returns:
    [len(labels), H, W, C] float32 in the model's data space.
  """
  out = []
  num_batches = -(-len(labels) // batch_size)
  for i in range(num_batches):
    chunk = labels[i * batch_size : (i + 1) * batch_size]
    batch_key = jax.random.fold_in(key, i)
    out.append(
      pixels.call_padded(
        lambda y, k=batch_key: sample_fn(y, k), chunk, batch_size
      )
    )
    if progress_every and (i + 1) % progress_every == 0:
      logging.info("Sampled %d/%d batches.", i + 1, num_batches)
  return np.concatenate(out)


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


def feature_statistics(feature_network, batches, *, log_every: int = 0):
  """uint8 pixel batches [b, H, W, C] -> (mean [d], covariance [d, d]) of
  their features, accumulated batch by batch (`fid.RunningStatistics`)."""
  running = fid.RunningStatistics()
  for i, batch in enumerate(batches):
    running.update(feature_network(batch.astype(np.float32) / 255.0))
    if log_every and (i + 1) % log_every == 0:
      logging.info("Features of %d images.", running.count)
  return running.result()


def _description(feature_network, config) -> dict:
  return dict(feature_network.description, **reference.description(config))


def check_reference(feature_network, config, cache_dir: str) -> None:
  """Raises now, not after training, when the reference statistics are
  neither cached nor computable (the reference images are missing)."""
  path = fid.cache_path(cache_dir, _description(feature_network, config))
  if not os.path.exists(path):
    reference.check(config)


def frechet_evaluation(
  pixel_batches, feature_network, config, cache_dir: str
) -> dict:
  """FID of uint8 sample batches against the reference images.

  The reference (`eval.reference_data`, `eval.reference_split`; see
  `evaluate.reference`) statistics are computed once per feature network and
  reference, and cached in `cache_dir`.
  """
  description = _description(feature_network, config)

  def compute():
    batches = reference.pixel_batches(config, config.eval_batch_size)
    return feature_statistics(feature_network, batches, log_every=20)

  ref_mean, ref_cov, path = fid.cached_reference_statistics(
    cache_dir, description, compute
  )
  sample_mean, sample_cov = feature_statistics(feature_network, pixel_batches)
  return {
    "fid": fid.frechet_distance(sample_mean, sample_cov, ref_mean, ref_cov),
    "reference_statistics": path,
    **description,
  }


def evaluate_samples(
  sample_fn,
  feature_network,
  config,
  *,
  inference_steps: int,
  cache_dir,
  sample_pixels=None,
):
  """Samples `eval.num_samples` images (balanced classes) and scores them.

  With a feature network, the samples become pixels through `sample_pixels`
  (a `pixels.SamplePixels`, built here when None: latents are decoded by the
  VAE) and are scored against the reference images.

  Returns:
    eval.json fields: the number of samples, the sampler, and with a feature
    network the FID and what it was measured against.
  """
  e, s = config.eval, config.sampler
  labels = class_labels(e.num_samples, config.data.num_classes)
  images = generate(
    sample_fn,
    labels,
    jax.random.key(config.seed + 1),
    batch_size=config.eval_batch_size,
    progress_every=10,
  )
  result = {
    "num_samples": int(len(images)),
    "inference_steps": int(inference_steps),
    "sampler": s.method,
    "guidance_scale": float(s.guidance_scale),
  }
  if feature_network is not None:
    sample_pixels = sample_pixels or pixels.SamplePixels(config)
    batches = sample_pixels.batches(images, config.eval_batch_size)
    result.update(
      frechet_evaluation(batches, feature_network, config, cache_dir)
    )
  return result


class SampleEvaluator:
  """`evaluator(trainer) -> eval.json fields` of a generator: samples and,
  with a feature network, their FID (`evaluate_samples`).

  Making one is the check at the start of training, and loads no network:
  the feature network's weight file (`features.from_config`) and, for
  latents, the VAE's (`pixels.SamplePixels`) exist and are well formed, and
  the reference statistics are cached or their images present. Inception
  and the VAE decoder are loaded at the first evaluation and leave the
  device after each one (a host copy serves the next), so they never sit on
  the device while training runs.

  Args:
    config: the run's config (`eval.*`, `data.*`, `encode.*`, `sampler.*`).
    sample_fn: `sample_fn(trainer)` -> `sample(labels [b], key)` ->
      [b, H, W, C] samples in the data space.
    inference_steps: the sampler's steps (for eval.json).
    cache_dir: where reference statistics are cached.

  Attributes:
    feature_network: from `features.from_config` (None for "none").
    sample_pixels: the samples' path to pixels (None without a feature
      network).
  """

  def __init__(self, config, sample_fn, *, inference_steps: int, cache_dir):
    from dblocks_jax.evaluate import features

    self.config = config
    self.sample_fn = sample_fn
    self.inference_steps = int(inference_steps)
    self.cache_dir = cache_dir
    self.feature_network = features.from_config(config)
    self.sample_pixels = None
    if self.feature_network is not None:
      # Fails now, not after training: VAE weights, reference images.
      self.sample_pixels = pixels.SamplePixels(config)
      check_reference(self.feature_network, config, cache_dir)

  def __call__(self, trainer) -> dict:
    try:
      return evaluate_samples(
        self.sample_fn(trainer),
        self.feature_network,
        self.config,
        inference_steps=self.inference_steps,
        cache_dir=self.cache_dir,
        sample_pixels=self.sample_pixels,
      )
    finally:
      self.release()

  def release(self) -> None:
    """Frees the networks' device memory until the next evaluation."""
    for network in (self.feature_network, self.sample_pixels):
      if hasattr(network, "release"):
        network.release()
