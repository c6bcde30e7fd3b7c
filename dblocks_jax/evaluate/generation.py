"""Sampling a trained generator: routed sampler, image grids, FID."""

import dataclasses
import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from dblocks_jax.evaluate import fid, pixels


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


def _description(feature_network, reference) -> dict:
  return dict(feature_network.description, **reference.description)


def check_reference(feature_network, reference, cache_dir: str) -> None:
  """Raises now, not after training, when the reference statistics are
  neither cached nor computable (the reference images are missing).

  Args:
    feature_network: its `description` keys the cache.
    reference: a `reference.ReferenceImages`.
    cache_dir: where reference statistics are cached.
  """
  path = fid.cache_path(cache_dir, _description(feature_network, reference))
  if not os.path.exists(path):
    reference.check()


def frechet_evaluation(
  pixel_batches, feature_network, reference, cache_dir: str, *, batch_size
) -> dict:
  """FID of uint8 sample batches [b, H, W, C] against the reference images.

  The statistics of `reference` (a `reference.ReferenceImages`, read in
  batches of `batch_size`) are computed once per feature network and
  reference, and cached in `cache_dir`.
  """
  description = _description(feature_network, reference)

  def compute():
    batches = reference.pixel_batches(batch_size)
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


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """How a generator's evaluation samples.

  Attributes:
    num_samples: images to sample, the classes balanced (`class_labels`).
    num_classes: classes of the labels.
    seed: the samples' key is `key(seed)`.
    batch_size: images per sampler call (and per feature-network call).
    inference_steps: the sampler's steps (for eval.json).
    sampler: the sampler's method (for eval.json).
    guidance_scale: its classifier-free guidance (for eval.json).
  """

  num_samples: int
  num_classes: int
  seed: int
  batch_size: int
  inference_steps: int
  sampler: str
  guidance_scale: float


def evaluate_samples(
  sample_fn,
  settings: SampleSettings,
  *,
  feature_network=None,
  sample_pixels=None,
  reference=None,
  cache_dir: str = "",
) -> dict:
  """Samples `settings.num_samples` images (balanced classes) and scores
  them.

  Args:
    sample_fn: `sample(labels [b], key) -> [b, H, W, C]` in the data space.
    settings: the sampling.
    feature_network: pixels [b, H, W, C] in [0, 1] -> [b, d] features, with
      a `description`; None: no FID.
    sample_pixels: samples -> uint8 pixels (a `pixels.SamplePixels`: latents
      are decoded by the VAE); needed with a feature network.
    reference: the reference images (a `reference.ReferenceImages`); needed
      with a feature network.
    cache_dir: where reference statistics are cached.

  Returns:
    eval.json fields: the number of samples, the sampler, and with a feature
    network the FID and what it was measured against.
  """
  labels = class_labels(settings.num_samples, settings.num_classes)
  images = generate(
    sample_fn,
    labels,
    jax.random.key(settings.seed),
    batch_size=settings.batch_size,
    progress_every=10,
  )
  result = {
    "num_samples": int(len(images)),
    "inference_steps": int(settings.inference_steps),
    "sampler": settings.sampler,
    "guidance_scale": float(settings.guidance_scale),
  }
  if feature_network is not None:
    if sample_pixels is None or reference is None:
      raise ValueError("a feature network needs sample_pixels and reference.")
    batches = sample_pixels.batches(images, settings.batch_size)
    result.update(
      frechet_evaluation(
        batches,
        feature_network,
        reference,
        cache_dir,
        batch_size=settings.batch_size,
      )
    )
  return result


class SampleEvaluator:
  """`evaluator(trainer) -> eval.json fields` of a generator: samples and,
  with a feature network, their FID (`evaluate_samples`).

  Making one is the check at the start of training, and loads no network:
  the reference statistics are cached or their images present (the feature
  network's and the VAE's weight files were checked when they were made).
  Inception and the VAE decoder are loaded at the first evaluation and
  leave the device after each one (a host copy serves the next), so they
  never sit on the device while training runs.

  Args:
    sample_fn: `sample_fn(trainer)` -> `sample(labels [b], key)` ->
      [b, H, W, C] samples in the data space.
    settings: the sampling (`SampleSettings`).
    feature_network: None (no FID), or the feature network of the FID, with
      `sample_pixels` and `reference` (as `evaluate_samples`).
    cache_dir: where reference statistics are cached.
  """

  def __init__(
    self,
    sample_fn,
    settings: SampleSettings,
    *,
    feature_network=None,
    sample_pixels=None,
    reference=None,
    cache_dir: str = "",
  ):
    self.sample_fn = sample_fn
    self.settings = settings
    self.cache_dir = cache_dir
    self.feature_network = feature_network
    self.sample_pixels = self.reference = None
    if feature_network is not None:
      if sample_pixels is None or reference is None:
        raise ValueError("a feature network needs sample_pixels and reference.")
      self.sample_pixels, self.reference = sample_pixels, reference
      # Fails now, not after training: the reference images.
      check_reference(self.feature_network, reference, cache_dir)

  def __call__(self, trainer) -> dict:
    try:
      return evaluate_samples(
        self.sample_fn(trainer),
        self.settings,
        feature_network=self.feature_network,
        sample_pixels=self.sample_pixels,
        reference=self.reference,
        cache_dir=self.cache_dir,
      )
    finally:
      self.release()

  def release(self) -> None:
    """Frees the networks' device memory until the next evaluation."""
    for network in (self.feature_network, self.sample_pixels):
      if hasattr(network, "release"):
        network.release()
