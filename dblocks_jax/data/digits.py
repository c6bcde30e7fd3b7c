"""The scikit-learn 8x8 handwritten digits, split deterministically."""

import functools

import numpy as np

from dblocks_jax.data import arrays

NUM_CLASSES = 10
NUM_TRAIN = 1497
SPLITS = ("train", "test")
_SPLIT_SEED = 0


@functools.cache
def _load_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns images [1797, 8, 8, 1] uint8, labels [1797] int32, permutation."""
  # Imported here: scikit-learn takes a second to import and only this
  # dataset needs it.
  from sklearn import datasets

  digits = datasets.load_digits()
  # Pixel values are 0..16; stretch them to the usual 0..255.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
  return images[..., None], labels, order


@functools.cache
def load_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns one split as images [num, 8, 8, 1] uint8 and labels [num] int32.

  The first 1,497 examples of a permutation seeded with 0 are `train`, the
  last 300 are `test`.

  Args:
    split: `train` or `test`.
  """
  images, labels, order = _load_all()
  if split == "train":
    chosen = order[:NUM_TRAIN]
  elif split == "test":
    chosen = order[NUM_TRAIN:]
  else:
    raise ValueError(f"unknown digits split {split!r}")
  chosen_images = images[chosen]
  chosen_labels = labels[chosen]
  chosen_images.flags.writeable = False
  chosen_labels.flags.writeable = False
  return chosen_images, chosen_labels


def load(split: str, field: str) -> arrays.ArraySource:
  """Returns the split named by `data.<field>` as a source."""
  if split not in SPLITS:
    raise arrays.unknown_split(field, split, "digits", SPLITS)
  return arrays.ArraySource(*load_arrays(split))
