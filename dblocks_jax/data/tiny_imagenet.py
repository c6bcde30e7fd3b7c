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
    with Image.open(self.paths[index]) as image:
      image = image.convert("RGB")
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
  with open(path) as f:
    return tuple(line.strip() for line in f if line.strip())


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
  paths, labels = [], []
  with open(annotations) as f:
    for line in f:
      fields = line.split("\t")
      if len(fields) < 2:
        continue
      name, wnid = fields[0].strip(), fields[1].strip()
      if wnid not in label_of:
        raise DataError(
          f"Tiny-ImageNet: {annotations} labels {name} with {wnid!r}, which "
          "is not in wnids.txt; the folder is not an intact tiny-imagenet-200"
        )
      paths.append(os.path.join(folder, "val", "images", name))
      labels.append(label_of[wnid])
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
