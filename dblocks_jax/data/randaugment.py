"""RandAugment on uint8 images, following torchvision's semantics.

Each of `num_ops` rounds picks one of 14 operations uniformly at random and
applies it at the strength that `magnitude` indexes among `num_bins` evenly
spaced strengths; for signed operations the sign is a fair coin flip.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from dblocks_jax.data import image_utils

NUM_BINS = 31

# An operation maps `[height, width, channels] uint8` and a signed strength
# to an image of the same shape.
_Op = Callable[[np.ndarray, float], np.ndarray]
_PilOp = Callable[[Image.Image, float], Image.Image]


def _on_pil(op: _PilOp) -> _Op:
  """Wraps an operation on PIL images as one on arrays."""

  def apply(image: np.ndarray, amount: float) -> np.ndarray:
    return image_utils.from_pil(op(image_utils.to_pil(image), amount))

  return apply


def _affine(image: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
  # Maps each output pixel (x, y) to the input pixel (a x + b y + c,
  # d x + e y + f); pixels from outside the image are black.
  return image.transform(
    image.size,
    Image.Transform.AFFINE,
    coeffs,
    resample=Image.Resampling.NEAREST,
    fillcolor=0,
  )


def _shear_x(image: Image.Image, amount: float) -> Image.Image:
  return _affine(image, (1.0, amount, 0.0, 0.0, 1.0, 0.0))


def _shear_y(image: Image.Image, amount: float) -> Image.Image:
  return _affine(image, (1.0, 0.0, 0.0, amount, 1.0, 0.0))


def _translate_x(image: Image.Image, pixels: float) -> Image.Image:
  return _affine(image, (1.0, 0.0, -float(int(pixels)), 0.0, 1.0, 0.0))


def _translate_y(image: Image.Image, pixels: float) -> Image.Image:
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, -float(int(pixels))))


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
  return image.rotate(degrees, resample=Image.Resampling.NEAREST, fillcolor=0)


def _enhancer(kind: Callable[[Image.Image], Any]) -> _PilOp:
  def apply(image: Image.Image, amount: float) -> Image.Image:
    return kind(image).enhance(1.0 + amount)

  return apply


# Point operations, in numpy: PIL's ImageOps builds a Python lookup table on
# every call, which costs more than the whole operation here.


def _identity(image: np.ndarray, _: float) -> np.ndarray:
  return image


def _posterize(image: np.ndarray, bits: float) -> np.ndarray:
  """Keeps the top `bits` bits of every pixel."""
  return image & np.uint8((0xFF << (8 - int(bits))) & 0xFF)


def _solarize(image: np.ndarray, threshold: float) -> np.ndarray:
  """Inverts the pixels at or above `threshold`."""
  return np.where(image < threshold, image, 255 - image).astype(np.uint8)


def _per_channel(
  image: np.ndarray, lookup: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
  """Maps each channel through the 256-entry table `lookup(channel)` gives."""
  out = np.empty_like(image)
  for c in range(image.shape[-1]):
    channel = image[..., c]
    out[..., c] = lookup(channel)[channel]
  return out


def _autocontrast_table(channel: np.ndarray) -> np.ndarray:
  """Stretches the occupied range of values to 0..255, as PIL does."""
  low, high = int(channel.min()), int(channel.max())
  if high <= low:
    return np.arange(256, dtype=np.uint8)
  scale = 255.0 / (high - low)
  table = (np.arange(256) * scale - low * scale).astype(np.int64)
  return np.clip(table, 0, 255).astype(np.uint8)


def _equalize_table(channel: np.ndarray) -> np.ndarray:
  """Flattens the histogram, as PIL does: the top value's count is ignored."""
  histogram = np.bincount(channel.ravel(), minlength=256)
  occupied = histogram[histogram > 0]
  step = (int(occupied.sum()) - int(occupied[-1])) // 255
  if len(occupied) <= 1 or step == 0:
    return np.arange(256, dtype=np.uint8)
  below = np.concatenate([[0], np.cumsum(histogram)[:-1]])
  return np.minimum((step // 2 + below) // step, 255).astype(np.uint8)


def _autocontrast(image: np.ndarray, _: float) -> np.ndarray:
  return _per_channel(image, _autocontrast_table)


def _equalize(image: np.ndarray, _: float) -> np.ndarray:
  return _per_channel(image, _equalize_table)


# name -> (operation, strength at the top bin, signed). Strengths grow
# linearly from 0 over the bins, except Posterize and Solarize (see
# `strength`) and the strength-free operations (None).
_OPS: dict[str, tuple[_Op, float | None, bool]] = {
  "Identity": (_identity, None, False),
  "ShearX": (_on_pil(_shear_x), 0.3, True),
  "ShearY": (_on_pil(_shear_y), 0.3, True),
  # Translation is a fraction of the width or height; see `strength`.
  "TranslateX": (_on_pil(_translate_x), 150.0 / 331.0, True),
  "TranslateY": (_on_pil(_translate_y), 150.0 / 331.0, True),
  "Rotate": (_on_pil(_rotate), 30.0, True),
  "Brightness": (_on_pil(_enhancer(ImageEnhance.Brightness)), 0.9, True),
  "Color": (_on_pil(_enhancer(ImageEnhance.Color)), 0.9, True),
  "Contrast": (_on_pil(_enhancer(ImageEnhance.Contrast)), 0.9, True),
  "Sharpness": (_on_pil(_enhancer(ImageEnhance.Sharpness)), 0.9, True),
  "Posterize": (_posterize, None, False),
  "Solarize": (_solarize, None, False),
  "AutoContrast": (_autocontrast, None, False),
  "Equalize": (_equalize, None, False),
}
OP_NAMES = tuple(_OPS)
SIGNED_OPS = frozenset(name for name, op in _OPS.items() if op[2])


def strength(
  name: str, magnitude: int, num_bins: int, height: int, width: int
) -> float:
  """Returns the unsigned strength of operation `name` at bin `magnitude`.

  Args:
    name: one of `OP_NAMES`.
    magnitude: bin index in [0, num_bins).
    num_bins: number of strengths between none and the strongest.
    height: image height, which TranslateY scales with.
    width: image width, which TranslateX scales with.
  """
  fraction = magnitude / (num_bins - 1) if num_bins > 1 else 0.0
  if name == "Posterize":
    # 8 bits at bin 0 down to 4 bits at the top bin.
    return float(8 - int(np.round(magnitude / ((num_bins - 1) / 4.0))))
  if name == "Solarize":
    return 255.0 * (1.0 - fraction)
  top = _OPS[name][1]
  if top is None:
    return 0.0
  if name == "TranslateX":
    top *= width
  elif name == "TranslateY":
    top *= height
  return top * fraction


def apply_op(image: np.ndarray, name: str, amount: float) -> np.ndarray:
  """Applies one operation at a signed strength.

  Args:
    image: [height, width, 1 or 3] uint8.
    name: one of `OP_NAMES`.
    amount: the signed strength, as `strength` returns it.

  Returns:
    [height, width, channels] uint8, the input's shape.
  """
  return _OPS[name][0](image, amount)


def rand_augment(
  image: np.ndarray,
  rng: np.random.Generator,
  num_ops: int = 2,
  magnitude: int = 9,
  num_bins: int = NUM_BINS,
) -> np.ndarray:
  """Applies `num_ops` random operations at strength bin `magnitude`.

  Args:
    image: [height, width, 1 or 3] uint8.
    rng: the only source of randomness.
    num_ops: how many operations to apply in sequence.
    magnitude: strength bin in [0, num_bins).
    num_bins: number of strength bins (31 as in torchvision).

  Returns:
    [height, width, channels] uint8, the input's shape.
  """
  if not 0 <= magnitude < num_bins:
    raise ValueError(f"magnitude {magnitude} is not in [0, {num_bins})")
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(
      f"expected [height, width, 1 or 3] uint8, got {image.shape}"
    )
  height, width, _ = image.shape
  for _ in range(num_ops):
    name = OP_NAMES[int(rng.integers(len(OP_NAMES)))]
    op, _, signed = _OPS[name]
    amount = strength(name, magnitude, num_bins, height, width)
    if signed and rng.integers(2):
      amount = -amount
    image = op(image, amount)
  return image
