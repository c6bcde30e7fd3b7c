"""Random-access sources over in-memory arrays, and split-name errors."""

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
