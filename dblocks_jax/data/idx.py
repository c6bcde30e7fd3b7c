"""Reads Fashion-MNIST from IDX files, as Debian's dataset-fashion-mnist has.

IDX layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of
dimensions, each dimension as a big-endian uint32, then the data in C order.
"""

import functools
import gzip
import math
import os
import zlib

import numpy as np

from dblocks_jax.data import arrays
from dblocks_jax.errors import DataError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
NUM_CLASSES = 10
# Split name -> file-name prefix.
_PREFIXES = {"train": "train", "test": "t10k"}
SPLITS = tuple(_PREFIXES)
_UNSIGNED_BYTE = 0x08
_FIX = (
  "re-install it (`sudo apt-get install --reinstall dataset-fashion-mnist`) "
  "or re-download it, or point data.dir at intact files"
)


def damaged(path: str, what: str) -> DataError:
  """The error for an IDX file that cannot be read: names it and the fix."""
  return DataError(f"{path} is damaged ({what}); {_FIX}")


def parse_idx(data: bytes, path: str = "<bytes>") -> np.ndarray:
  """Decodes the bytes of one uncompressed IDX file of unsigned bytes.

  Args:
    data: the whole file.
    path: its name, for error messages.

  Returns:
    The array, uint8, with the dimensions stored in the header.
  """
  if len(data) < 4 or data[0] or data[1] or data[2] != _UNSIGNED_BYTE:
    raise damaged(path, "not an IDX file of unsigned bytes: bad magic number")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise damaged(
      path, f"{len(data)} bytes, shorter than its {ndim}-dimension header"
    )
  dims = tuple(
    int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
  )
  if len(data) - header != math.prod(dims):
    raise damaged(
      path,
      f"{len(data) - header} bytes of data but its header says {dims}, "
      f"{math.prod(dims)} bytes",
    )
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file, gzip-compressed when the name ends in `.gz`."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except EOFError as e:
    raise damaged(path, f"truncated gzip stream: {e}") from e
  except (gzip.BadGzipFile, zlib.error) as e:
    raise damaged(path, f"corrupt gzip data: {e}") from e
  return parse_idx(data, path)


def _find(folder: str, stem: str) -> str | None:
  """Returns `folder/stem.gz` or `folder/stem`, whichever exists first."""
  for suffix in (".gz", ""):
    path = os.path.join(folder, stem + suffix)
    if os.path.isfile(path):
      return path
  return None


def _missing(folder: str, stem: str) -> DataError:
  return DataError(
    f"Fashion-MNIST IDX file {stem}[.gz] not found in {folder}; install the "
    "files with `sudo apt-get install dataset-fashion-mnist`, or set "
    "data.dir to a folder that holds them"
  )


@functools.cache
def load_arrays(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split, once per folder.

  Args:
    folder: the folder that holds `{train,t10k}-{images-idx3,labels-idx1}-ubyte`
      files, each optionally gzip-compressed.
    split: `train` or `test`.

  Returns:
    images: [num, height, width, 1] uint8, read-only.
    labels: [num] int32, read-only.
  """
  prefix = _PREFIXES[split]
  paths = []
  for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
    path = _find(folder, stem)
    if path is None:
      raise _missing(folder, stem)
    paths.append(path)
  images = read_idx(paths[0])
  labels = read_idx(paths[1]).astype(np.int32)
  if images.ndim != 3:
    raise damaged(paths[0], f"shape {images.shape}, not [num, height, width]")
  if labels.ndim != 1 or len(labels) != len(images):
    raise damaged(
      paths[1],
      f"{labels.shape} labels for the {len(images)} images of {paths[0]}",
    )
  if len(labels) and labels.max() >= NUM_CLASSES:
    raise damaged(
      paths[1], f"label {labels.max()} is not below {NUM_CLASSES} classes"
    )
  images = images[..., None]
  labels.flags.writeable = False
  return images, labels


def load(folder: str, split: str, field: str) -> arrays.ArraySource:
  """Returns the split named by `data.<field>` as a source.

  Args:
    folder: `data.dir`, or '' for the Debian package's folder.
    split: `train` or `test`.
    field: the config field that named the split, for error messages.
  """
  if split not in SPLITS:
    raise arrays.unknown_split(field, split, "fashion_mnist_idx", SPLITS)
  folder = os.path.abspath(os.path.expanduser(folder or DEFAULT_DIR))
  return arrays.ArraySource(*load_arrays(folder, split))
