"""Random-access sources over in-memory arrays, slices of sources, and
split-name errors."""

import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from dblocks_jax.errors import DataError


class Source(Protocol):
  """What grain reads: `len()` and `[index]` giving one example.

  An example is `{"image": [height, width, channels] uint8, "label": int}`.
  """

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


class ArraySource:
  """A source over images and labels that are already decoded in memory."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    """Wraps arrays without copying them.

    Args:
      images: [num_examples, height, width, channels] uint8.
      labels: [num_examples] integer class indices.
    """
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(
        f"images must be [num, height, width, channels] uint8, got "
        f"{images.shape} {images.dtype}"
      )
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images = images
    self.labels = labels

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.images[index], "label": int(self.labels[index])}

  def __repr__(self) -> str:
    return (
      f"ArraySource(images={self.images.shape}, labels={self.labels.shape})"
    )


def unknown_split(
  field: str, split: str, name: str, choices: Sequence[str]
) -> DataError:
  """Returns the error for a split name that a dataset does not have."""
  return DataError(
    f"data.{field}={split!r} is not a split of {name}; choose one of: "
    f"{', '.join(choices)}"
  )


# `name[start:stop]`, each bound an integer or a percentage (TFDS's syntax).
_SLICED = re.compile(
  r"^(?P<name>[^\[\]]+)\[(?P<start>[^:\]]*):(?P<stop>[^\]]*)\]$"
)


def parse_split(split: str) -> tuple[str, str | None, str | None]:
  """Splits `name[start:stop]` into (name, start, stop); a bare name gives
  (name, None, None). Bounds are kept as written ("1000", "-5", "90%")."""
  match = _SLICED.match(split)
  if not match:
    return split, None, None
  return match["name"], match["start"] or None, match["stop"] or None


def _bound(text: str | None, length: int, field: str, split: str) -> int | None:
  if text is None:
    return None
  try:
    if text.endswith("%"):
      return round(length * int(text[:-1]) / 100)
    return int(text)
  except ValueError:
    raise DataError(
      f"data.{field}={split!r}: bounds are integers or percentages, e.g."
      " 'train[:90%]' or 'train[-5000:]'"
    ) from None


def slice_source(source: Source, split: str, field: str) -> Source:
  """The examples of `source` that `split`'s bounds select (a bare name:
  `source` itself).

  Args:
    source: the whole split, e.g. `train`.
    split: the split as the config names it, e.g. `train[:90%]` (the first
      90%, rounded), `train[54000:]`, `train[-6000:]`.
    field: the config field that named it, for error messages.

  Raises:
    DataError: the bounds are not integers or percentages, or select nothing.
  """
  _, start, stop = parse_split(split)
  if start is None and stop is None:
    return source
  length = len(source)
  selected = range(length)[
    slice(
      _bound(start, length, field, split), _bound(stop, length, field, split)
    )
  ]
  if len(selected) == 0:
    raise DataError(
      f"data.{field}={split!r} selects no examples of the {length} in the split"
    )
  if isinstance(source, ArraySource):  # Views, no copy.
    window = slice(selected.start, selected.stop)
    return ArraySource(source.images[window], source.labels[window])
  return SlicedSource(source, selected.start, len(selected))


class SlicedSource:
  """Examples `[start, start + length)` of another source."""

  def __init__(self, source: Source, start: int, length: int):
    self.source = source
    self.start = start
    self.length = length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not -self.length <= index < self.length:
      raise IndexError(f"index {index} of a source of {self.length}")
    return self.source[self.start + index % self.length]

  def __repr__(self) -> str:
    return (
      f"SlicedSource({self.source!r}, start={self.start}, length={self.length})"
    )
