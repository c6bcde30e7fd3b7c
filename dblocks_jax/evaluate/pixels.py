"""Samples -> uint8 pixels, for image grids and feature networks.

Pixel datasets: the inverse of the data normalisation. Latent datasets: the
SD-VAE decoder first (`LatentDecoder`), whose output space is [-1, 1] (mean
0.5, std 0.5 in pixel units). `SamplePixels` is the one path that
`--mode=sample` and the FID evaluation share (`families.evaluation` makes
it as a config names it).
"""

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dblocks_jax.models.pretrained import vae as vae_lib
from dblocks_jax.models.pretrained import vae_weights

DECODED_MEAN = DECODED_STD = (0.5, 0.5, 0.5)  # VAE images are in [-1, 1].


def to_pixels(images: np.ndarray, mean, std) -> np.ndarray:
  """Data-space images -> uint8 pixels: clip(255 (x std + mean))."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  unit = np.asarray(images, np.float32) * std + mean
  return np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)


def call_padded(fn, batch: np.ndarray, size: int) -> np.ndarray:
  """fn on `batch` [n, ...] padded with zeros along axis 0 to `size` rows
  (one compiled program serves every smaller batch), trimmed back to n."""
  n = len(batch)
  pad = ((0, max(size - n, 0)),) + ((0, 0),) * (batch.ndim - 1)
  return np.asarray(fn(jnp.asarray(np.pad(batch, pad))))[:n]


def pixel_shape(image_shape, downsample_factor: int = 0) -> tuple[int, ...]:
  """[H, W, C] of a sample's pixels, reading no data.

  Args:
    image_shape: [h, w, c] of the samples.
    downsample_factor: 0 for pixel samples; for latent samples, the factor
      f of the VAE that decodes them to [h f, w f, 3].
  """
  h, w, c = (int(d) for d in image_shape)
  if not downsample_factor:
    return h, w, c
  f = int(downsample_factor)
  return h * f, w * f, 3


class LazyParams:
  """A network's parameters, loaded by `load()` at their first use and held
  on the device until `release()`, which keeps a host copy that the next
  use copies back: the file is read, and the network compiled, once.

  Attributes:
    loads: how many times `load` ran (0 before the first use).
  """

  def __init__(self, load):
    self._load = load
    self.loads = 0
    self._device = self._host = None

  @property
  def on_device(self) -> bool:
    return self._device is not None

  def get(self):
    """The parameters on the device (loaded at the first call)."""
    if self._device is None:
      if self._host is None:
        self._device = self._load()
        self.loads += 1
      else:
        self._device = jax.device_put(self._host)
    return self._device

  def release(self) -> None:
    """Drops the device copy (taking the host copy the first time)."""
    if self._device is not None and self._host is None:
      self._host = jax.device_get(self._device)
    self._device = None


class LatentDecoder:
  """Scaled latents [b, h, w, c] -> images [b, h f, w f, 3] in [-1, 1].

  The weights are checked when this is made (`vae_weights.check_file`) and
  loaded at the first call (`params`), so the VAE is not on the device
  before it, nor after `release`. Jitted once: a batch smaller than the
  first one is padded to its size.

  Args:
    weights: the SD VAE's safetensors file.
    vae: its architecture.
    scaling_factor: the latents' scale (latents / scale are decoded).
  """

  def __init__(self, weights: str, vae: vae_lib.VAEConfig, scaling_factor):
    self.weights = weights
    vae_weights.check_file(self.weights)
    self._vae = vae
    self._scale = float(scaling_factor)
    self._decode = None  # Jitted at the first call.
    self.params = LazyParams(self._load)
    self._batch = 0

  def _load(self):
    graphdef, params = nnx.split(vae_weights.load_vae(self.weights, self._vae))
    scale = self._scale
    self._decode = jax.jit(
      lambda params, z: nnx.merge(graphdef, params).decode(z / scale)
    )
    return params

  def release(self) -> None:
    """Frees the VAE's device memory until the next call."""
    self.params.release()

  def __call__(self, latents: np.ndarray) -> np.ndarray:
    latents = np.asarray(latents, np.float32)
    params = self.params.get()
    self._batch = self._batch or len(latents)
    images = call_padded(
      lambda z: self._decode(params, z), latents, self._batch
    )
    return images.astype(np.float32)


class SamplePixels:
  """Data-space samples [n, ...] -> uint8 pixels [n, H, W, C], in batches.

  Args:
    shape: [H, W, C] of the pixels (`pixel_shape`).
    mean, std: [C] the data normalisation that `to_pixels` inverts
      (`DECODED_MEAN`, `DECODED_STD` for decoded latents).
    decoder: latents -> images (a `LatentDecoder`, its weight file checked
      when made, the VAE loaded at its first call); None for pixel samples.
  """

  def __init__(self, shape, mean, std, decoder=None):
    self.shape = tuple(int(d) for d in shape)
    self.mean, self.std = mean, std
    self.decoder = decoder

  def batches(self, images: np.ndarray, batch_size: int) -> Iterator:
    """Yields uint8 [<= batch_size, H, W, C], in order."""
    for start in range(0, len(images), batch_size):
      chunk = images[start : start + batch_size]
      if self.decoder is not None:
        chunk = self.decoder(chunk)
      yield to_pixels(chunk, self.mean, self.std)

  def __call__(self, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate(list(self.batches(images, batch_size)))

  def release(self) -> None:
    """Frees the VAE's device memory until the next call (latents)."""
    if self.decoder is not None:
      self.decoder.release()
