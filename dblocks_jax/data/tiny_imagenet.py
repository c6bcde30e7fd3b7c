"""Reads the extracted Tiny-ImageNet folder (tiny-imagenet-200) from disk.

Layout: `wnids.txt` (200 class ids, one a line), `train/<wnid>/images/*.JPEG`
and `val/images/*.JPEG` labelled by `val/val_annotations.txt` (tab-separated:
file name, wnid, box). Images are 64x64; a few are greyscale.
"""

import functools
import os
from typing import Any

import numpy as np
from PIL import Image

from dblocks_jax.data import arrays
from dblocks_jax.errors import DataError

IMAGE_SHAPE = (64, 64, 3)
SPLITS = ("train", "val")
_LAYOUT = (
  "expected the tiny-imagenet-200 folder with wnids.txt, "
  "train/<wnid>/images/*.JPEG and val/images/*.JPEG plus "
  "val/val_annotations.txt: download tiny-imagenet-200.zip from the CS231n "
  "site (http://cs231n.stanford.edu/tiny-imagenet-200.zip), unzip it and set "
  "data.dir to the tiny-imagenet-200 folder"
)
# What PIL raises for a file it cannot decode: UnidentifiedImageError (an
# OSError) for a garbled header, OSError for truncated data, SyntaxError or
# ValueError for some broken headers, DecompressionBombError for absurd sizes.
_UNDECODABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_FIX = (
  "re-download tiny-imagenet-200.zip "
  "(http://cs231n.stanford.edu/tiny-imagenet-200.zip) and unzip it again"
)


def damaged(path: str, what: str) -> DataError:
  """The error for a Tiny-ImageNet file that cannot be read."""
  return DataError(f"Tiny-ImageNet: {path} is damaged ({what}); {_FIX}")


def _read_lines(path: str) -> list[str]:
  """The lines of a text file, or the damaged-file error."""
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().splitlines()
  except UnicodeDecodeError as e:
    raise damaged(path, f"not UTF-8 text: {e}") from e


class FileSource:
  """A source that decodes one JPEG per example."""

  def __init__(self, paths: tuple[str, ...], labels: np.ndarray):
    """Keeps the file list.

    Args:
      paths: one image file per example.
      labels: [num_examples] int32 class indices.
    """
    self.paths = paths
    self.labels = labels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    """Returns `{"image": [64, 64, 3] uint8, "label": int}`."""
    path = self.paths[index]
    try:
      with Image.open(path) as image:
        image = image.convert("RGB")
    except FileNotFoundError as e:
      raise DataError(f"Tiny-ImageNet: {path} is missing; {_FIX}") from e
    except _UNDECODABLE as e:
      raise damaged(path, f"PIL cannot decode it: {e}") from e
    height, width, _ = IMAGE_SHAPE
    if image.size != (width, height):
      image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return {"image": pixels, "label": int(self.labels[index])}

  def __repr__(self) -> str:
    return f"FileSource({len(self.paths)} files)"


def _missing(folder: str, what: str) -> DataError:
  return DataError(f"Tiny-ImageNet: {what} not found in {folder!r}; {_LAYOUT}")


@functools.cache
def class_ids(folder: str) -> tuple[str, ...]:
  """Returns the wnids in `wnids.txt` order; label i is the i-th."""
  path = os.path.join(folder, "wnids.txt")
  if not os.path.isfile(path):
    raise _missing(folder, "wnids.txt")
  wnids = tuple(line.strip() for line in _read_lines(path) if line.strip())
  if len(set(wnids)) != len(wnids):
    raise damaged(path, f"{len(wnids)} class ids, {len(set(wnids))} distinct")
  train = os.path.join(folder, "train")
  if os.path.isdir(train):  # A truncated wnids.txt lists fewer classes.
    on_disk = sum(
      os.path.isdir(os.path.join(train, n)) for n in os.listdir(train)
    )
    if on_disk > len(wnids):
      raise damaged(
        path,
        f"it lists {len(wnids)} class ids, but {train} holds {on_disk} classes",
      )
  if not wnids:
    raise damaged(path, "it lists no class ids")
  return wnids


@functools.cache
def _train_index(folder: str) -> tuple[tuple[str, ...], np.ndarray]:
  paths, labels = [], []
  for label, wnid in enumerate(class_ids(folder)):
    images = os.path.join(folder, "train", wnid, "images")
    if not os.path.isdir(images):
      raise _missing(folder, f"train/{wnid}/images")
    names = sorted(n for n in os.listdir(images) if n.endswith(".JPEG"))
    paths.extend(os.path.join(images, n) for n in names)
    labels.extend([label] * len(names))
  return tuple(paths), np.asarray(labels, np.int32)


@functools.cache
def _val_index(folder: str) -> tuple[tuple[str, ...], np.ndarray]:
  annotations = os.path.join(folder, "val", "val_annotations.txt")
  if not os.path.isfile(annotations):
    raise _missing(folder, "val/val_annotations.txt")
  label_of = {wnid: i for i, wnid in enumerate(class_ids(folder))}
  images = os.path.join(folder, "val", "images")
  paths, labels = [], []
  for number, line in enumerate(_read_lines(annotations), 1):
    if not line.strip():
      continue
    fields = [field.strip() for field in line.split("\t")]
    name, wnid = fields[0], fields[1] if len(fields) > 1 else ""
    if wnid not in label_of:
      raise damaged(
        annotations,
        f"line {number} labels {name!r} with {wnid!r}, not a class of "
        "wnids.txt",
      )
    paths.append(os.path.join(images, name))
    labels.append(label_of[wnid])
  if not os.path.isdir(images):
    raise _missing(folder, "val/images")
  on_disk = sum(n.endswith(".JPEG") for n in os.listdir(images))
  if on_disk > len(paths):  # A truncated annotations file.
    raise damaged(
      annotations,
      f"it labels {len(paths)} of the {on_disk} images in {images}",
    )
  if on_disk < len(paths):
    raise DataError(
      f"Tiny-ImageNet: {images} holds {on_disk} images, but {annotations} "
      f"labels {len(paths)}; {_FIX}"
    )
  return tuple(paths), np.asarray(labels, np.int32)


def _resolve(folder: str) -> str:
  if not folder:
    raise DataError(
      f"Tiny-ImageNet has no default folder and data.dir is empty; {_LAYOUT}"
    )
  folder = os.path.abspath(os.path.expanduser(folder))
  if not os.path.isdir(folder):
    raise _missing(os.path.dirname(folder), os.path.basename(folder))
  return folder


def load(folder: str, split: str, field: str) -> FileSource:
  """Returns the split named by `data.<field>` as a source.

  Args:
    folder: `data.dir`, the tiny-imagenet-200 folder.
    split: `train` or `val` (`test` has no labels).
    field: the config field that named the split, for error messages.
  """
  if split not in SPLITS:
    raise arrays.unknown_split(field, split, "tiny_imagenet", SPLITS)
  folder = _resolve(folder)
  index = _train_index if split == "train" else _val_index
  return FileSource(*index(folder))


def num_classes(folder: str) -> int:
  """Returns the number of classes listed in `wnids.txt`."""
  return len(class_ids(_resolve(folder)))
