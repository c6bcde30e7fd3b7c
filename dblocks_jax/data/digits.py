"""The scikit-learn 8x8 handwritten digits, split deterministically."""

import functools
import gzip
import importlib.util
import os
import zlib

import numpy as np

from dblocks_jax.data import arrays
from dblocks_jax.errors import DataError

NUM_CLASSES = 10
NUM_EXAMPLES = 1797
NUM_TRAIN = 1497
SPLITS = ("train", "test")
_SPLIT_SEED = 0
_FIX = "re-install scikit-learn (`pip install --force-reinstall scikit-learn`)"


def data_file() -> str:
  """scikit-learn's digits.csv.gz, found without importing scikit-learn.

  Each row: 64 pixels (0..16, row by row) and the label, comma-separated.
  """
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f"data.name='digits' needs scikit-learn; {_FIX}")
  folder = spec.submodule_search_locations[0]
  return os.path.join(folder, "datasets", "data", "digits.csv.gz")


def damaged(path: str, what: str) -> DataError:
  return DataError(f"{path} is damaged ({what}); {_FIX}")


def read_table(path: str) -> np.ndarray:
  """Returns the file's [1797, 65] rows, checked: integer pixels and labels."""
  try:  # Whole, so that the gzip checksum is checked before parsing.
    with gzip.open(path, "rb") as f:
      text = f.read().decode("utf-8")
  except FileNotFoundError as e:
    raise DataError(f"{path} is missing; {_FIX}") from e
  except EOFError as e:
    raise damaged(path, f"truncated gzip stream: {e}") from e
  except (gzip.BadGzipFile, zlib.error) as e:
    raise damaged(path, f"corrupt gzip data: {e}") from e
  except UnicodeDecodeError as e:
    raise damaged(path, f"not UTF-8 text: {e}") from e
  try:
    table = np.loadtxt(text.splitlines(), delimiter=",", ndmin=2)
  except ValueError as e:
    raise damaged(path, f"not a table of numbers: {e}") from e
  if table.shape != (NUM_EXAMPLES, 65):
    raise damaged(path, f"{table.shape} values, not ({NUM_EXAMPLES}, 65)")
  pixels, labels = table[:, :-1], table[:, -1]
  if (
    np.any(table != np.round(table))
    or not 0 <= pixels.min() <= pixels.max() <= 16
    or not 0 <= labels.min() <= labels.max() < NUM_CLASSES
  ):
    raise damaged(
      path, "values other than integer pixels 0..16 and labels 0..9"
    )
  return table


@functools.cache
def _load_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns images [1797, 8, 8, 1] uint8, labels [1797] int32, permutation."""
  table = read_table(data_file())
  # Pixel values are 0..16; stretch them to the usual 0..255.
  images = np.round(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0))
  images = images.astype(np.uint8)
  labels = table[:, -1].astype(np.int32)
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
