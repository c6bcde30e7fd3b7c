"""Random image augmentations and normalisation on uint8 numpy images.

`pad_and_crop` and `random_flip` take and return a batch, `images: [batch,
height, width, channels] uint8`, each image drawn independently; the others
one `image: [height, width, channels] uint8`. All draw randomness only from
the `np.random.Generator` they are given.
"""

import math

import numpy as np
from PIL import Image

from dblocks_jax.data import image_utils


def pad_and_crop(
  images: np.ndarray, padding: int, rng: np.random.Generator
) -> np.ndarray:
  """Zero-pads each side of each image by `padding`, then crops the
  original size at an offset drawn for each image (torchvision's
  `RandomCrop(size, padding=padding)`), in one gather.

  Args:
    images: [batch, height, width, channels] uint8.
    padding: the zero padding of each side; 0 returns `images`.
    rng: draws the offsets, 0..2 padding on each axis, rows first.
  """
  if padding <= 0:
    return images
  batch, height, width, _ = images.shape
  padded = np.pad(
    images, ((0, 0), (padding, padding), (padding, padding), (0, 0))
  )
  top, left = rng.integers(0, 2 * padding + 1, size=(2, batch))
  rows = top[:, None] + np.arange(height)  # [batch, height]
  cols = left[:, None] + np.arange(width)  # [batch, width]
  return padded[
    np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]
  ]


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors each image of `images: [batch, height, width, channels]`
  horizontally with probability 0.5."""
  flip = rng.random(len(images)) < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


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
  """Returns `(image / 255 - mean) / std` as float32 of `image`'s shape.

  Args:
    image: [..., height, width, channels] uint8 (one image or a batch).
    mean: [channels] float32, in [0, 1] pixel units.
    std: [channels] float32.
  """
  return (image.astype(np.float32) / np.float32(255.0) - mean) / std
