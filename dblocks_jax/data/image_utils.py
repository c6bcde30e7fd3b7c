"""Conversions between [height, width, channels] uint8 arrays and PIL."""

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
