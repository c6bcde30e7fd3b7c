"""Random image augmentations and normalisation on uint8 numpy images.

All functions take and return `image: [height, width, channels] uint8` and
draw randomness only from the `np.random.Generator` they are given.
"""

import math

import numpy as np
from PIL import Image

from dblocks_jax.data import image_utils


def pad_and_crop(
  image: np.ndarray, padding: int, rng: np.random.Generator
) -> np.ndarray:
  """Zero-pads each side by `padding`, then crops the original size at random.

  Like torchvision's `RandomCrop(size, padding=padding)`.
  """
  if padding <= 0:
    return image
  height, width, _ = image.shape
  # The crop's offset from the image: -padding..padding on each axis. Copy
  # the overlap into black instead of padding, which costs more.
  shift_y = int(rng.integers(0, 2 * padding + 1)) - padding
  shift_x = int(rng.integers(0, 2 * padding + 1)) - padding
  out = np.zeros_like(image)
  rows = height - abs(shift_y)
  cols = width - abs(shift_x)
  if rows > 0 and cols > 0:
    src_y, src_x = max(shift_y, 0), max(shift_x, 0)
    dst_y, dst_x = max(-shift_y, 0), max(-shift_x, 0)
    out[dst_y : dst_y + rows, dst_x : dst_x + cols] = image[
      src_y : src_y + rows, src_x : src_x + cols
    ]
  return out


def flip_left_right(image: np.ndarray) -> np.ndarray:
  """Mirrors the image horizontally."""
  return image[:, ::-1]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors the image horizontally with probability 0.5."""
  return flip_left_right(image) if rng.random() < 0.5 else image


def _crop_box(
  height: int,
  width: int,
  rng: np.random.Generator,
  scale: tuple[float, float],
  ratio: tuple[float, float],
  attempts: int,
) -> tuple[int, int, int, int]:
  """Returns (top, left, crop_height, crop_width) as RandomResizedCrop picks.

  Tries `attempts` random areas and aspect ratios; when none fits, falls back
  to the largest centred crop whose aspect ratio lies within `ratio`.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    crop_width = round(math.sqrt(target_area * aspect))
    crop_height = round(math.sqrt(target_area / aspect))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      top = int(rng.integers(0, height - crop_height + 1))
      left = int(rng.integers(0, width - crop_width + 1))
      return top, left, crop_height, crop_width
  in_ratio = width / height
  if in_ratio < min(ratio):
    crop_width = width
    crop_height = round(crop_width / min(ratio))
  elif in_ratio > max(ratio):
    crop_height = height
    crop_width = round(crop_height * max(ratio))
  else:
    crop_height, crop_width = height, width
  top = (height - crop_height) // 2
  left = (width - crop_width) // 2
  return top, left, crop_height, crop_width


def random_resized_crop(
  image: np.ndarray,
  rng: np.random.Generator,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
  attempts: int = 10,
) -> np.ndarray:
  """Crops a random area and aspect ratio, resized back to the image size.

  Like torchvision's `RandomResizedCrop(size)` with bilinear resizing, where
  `size` is the input's own (height, width).
  """
  height, width, _ = image.shape
  top, left, crop_height, crop_width = _crop_box(
    height, width, rng, scale, ratio, attempts
  )
  crop = image[top : top + crop_height, left : left + crop_width]
  resized = image_utils.to_pil(crop).resize(
    (width, height), Image.Resampling.BILINEAR
  )
  return image_utils.from_pil(resized)


def normalise(
  image: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
  """Returns `(image / 255 - mean) / std` as [height, width, channels] float32.

  Args:
    image: [height, width, channels] uint8.
    mean: [channels] float32, in [0, 1] pixel units.
    std: [channels] float32.
  """
  return (image.astype(np.float32) / np.float32(255.0) - mean) / std
