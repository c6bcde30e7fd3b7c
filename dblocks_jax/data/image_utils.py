"""Conversions between [height, width, channels] uint8 arrays and PIL, and
the centre crop of images for a VAE (`center_crop`)."""

import numpy as np
from PIL import Image


def to_pil(image: np.ndarray) -> Image.Image:
  """Converts `image: [height, width, 1 or 3] uint8` to an L or RGB image."""
  if (
    image.ndim != 3 or image.shape[-1] not in (1, 3) or image.dtype != np.uint8
  ):
    raise ValueError(
      f"expected [height, width, 1 or 3] uint8, got {image.shape} {image.dtype}"
    )
  height, width, channels = image.shape
  mode = "L" if channels == 1 else "RGB"
  # From raw bytes: about twice as fast as `Image.fromarray` on small images.
  return Image.frombytes(mode, (width, height), image.tobytes())


def from_pil(image: Image.Image) -> np.ndarray:
  """Returns `[height, width, channels] uint8`; L images get one channel."""
  channels = len(image.getbands())
  if image.mode not in ("L", "RGB"):
    raise ValueError(f"expected an L or RGB image, got mode {image.mode}")
  width, height = image.size
  pixels = np.frombuffer(image.tobytes(), dtype=np.uint8)
  return pixels.reshape(height, width, channels)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] (any size, grey or RGB) -> uint8 [size, size, 3].

  ADM's preprocessing, as DiT's: halve with a box filter while the short
  side is at least twice `size`, resize bicubically to a short side of
  `size`, crop the centre.
  """
  pil = Image.fromarray(
    np.asarray(image).squeeze(-1) if image.shape[-1] == 1 else image
  )
  pil = pil.convert("RGB")
  while min(pil.size) >= 2 * size:
    pil = pil.resize(tuple(s // 2 for s in pil.size), Image.Resampling.BOX)
  scale = size / min(pil.size)
  pil = pil.resize(
    tuple(round(s * scale) for s in pil.size), Image.Resampling.BICUBIC
  )
  array = np.asarray(pil)
  top = (array.shape[0] - size) // 2
  left = (array.shape[1] - size) // 2
  return array[top : top + size, left : left + size]
