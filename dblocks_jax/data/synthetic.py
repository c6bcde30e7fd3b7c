"""A deterministic, learnable synthetic classification task.

Each class has a fixed smooth random prototype image; an example is its
class's prototype plus seeded per-example Gaussian noise, so nearest-prototype
classification (and any reasonable model) reaches high accuracy.
"""

import functools
from typing import Any

import numpy as np
from PIL import Image

# Every name but `train` means the one held-out set, so that configs whose
# real dataset evaluates on `val` (Tiny-ImageNet) can swap in synthetic data.
SPLITS = ("train", "test", "val", "validation")
_PROTOTYPE_SEED = 0
# Prototypes are drawn on a coarse grid and upsampled, so that the small
# shifts of a padded random crop keep an example close to its class.
_GRID = 4
_NOISE_STD = 24.0


@functools.cache
def prototypes(
  num_classes: int, image_shape: tuple[int, int, int]
) -> np.ndarray:
  """Returns the class prototypes, [num_classes, height, width, channels] uint8.

  Args:
    num_classes: number of classes.
    image_shape: (height, width, channels).
  """
  height, width, channels = image_shape
  rng = np.random.default_rng(_PROTOTYPE_SEED)
  grid = (min(_GRID, height), min(_GRID, width))
  coarse = rng.integers(0, 256, (num_classes, *grid, channels), dtype=np.uint8)
  out = np.empty((num_classes, height, width, channels), np.uint8)
  for k in range(num_classes):
    for c in range(channels):
      plane = Image.fromarray(coarse[k, :, :, c])
      plane = plane.resize((width, height), Image.Resampling.BILINEAR)
      out[k, :, :, c] = np.asarray(plane)
  out.flags.writeable = False
  return out


class SyntheticSource:
  """Examples generated on demand from (split, index); nothing is stored."""

  def __init__(
    self,
    num_classes: int,
    image_shape: tuple[int, int, int],
    num_examples: int,
    split: str,
  ):
    """Describes one split.

    Args:
      num_classes: number of classes.
      image_shape: (height, width, channels).
      num_examples: length of the split.
      split: one of `SPLITS`; `train` and the held-out set (any other name)
        each get their own noise and labels.
    """
    self.num_classes = num_classes
    self.image_shape = image_shape
    self.num_examples = num_examples
    if split not in SPLITS:
      raise ValueError(f"unknown synthetic split {split!r}")
    self._split_id = 1 if split == "train" else 2

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, Any]:
    """Returns `{"image": [height, width, channels] uint8, "label": int}`."""
    if not 0 <= index < self.num_examples:
      raise IndexError(index)
    rng = np.random.default_rng((_PROTOTYPE_SEED, self._split_id, index))
    label = int(rng.integers(self.num_classes))
    prototype = prototypes(self.num_classes, self.image_shape)[label]
    noise = rng.normal(0.0, _NOISE_STD, self.image_shape)
    image = np.clip(np.rint(prototype + noise), 0, 255).astype(np.uint8)
    return {"image": image, "label": label}

  def __repr__(self) -> str:
    return (
      f"SyntheticSource({self.num_examples} x {self.image_shape}, "
      f"{self.num_classes} classes)"
    )
