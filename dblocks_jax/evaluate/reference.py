"""FID reference images: which images, as uint8 pixel batches, and their key.

`ReferenceImages` names them explicitly (`families.evaluation` makes one
from `eval.reference_data` and `eval.reference_split`):

  "data": an image dataset itself, mapped back to pixels; for pixel
    datasets.
  "encode": the raw images of an image dataset (those that `--mode=encode`
    reads), centre-cropped to `crop` by `data.image_utils.center_crop`, the
    pixels the VAE saw; for latent datasets, whose samples are decoded to
    such pixels before the feature network.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np

from dblocks_jax import data
from dblocks_jax.data import sources
from dblocks_jax.data.image_utils import center_crop
from dblocks_jax.data.info import normalisation
from dblocks_jax.data.options import DataOptions
from dblocks_jax.errors import DataError
from dblocks_jax.evaluate.pixels import to_pixels

KINDS = ("data", "encode")


@dataclasses.dataclass(frozen=True)
class ReferenceImages:
  """The reference images of a Frechet distance.

  Attributes:
    kind: "data" or "encode" (see the module docstring).
    options: the dataset; its `eval_split` is the reference split.
    crop: "encode": the side of the centre crop ([crop, crop, 3] pixels).
    label: what names the images in a missing-data error ("encode" only;
      e.g. the config fields that chose them).
  """

  kind: str
  options: DataOptions
  crop: int = 0
  label: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind={self.kind!r} is not one of {KINDS}.")
    if self.kind == "encode" and self.crop < 1:
      raise ValueError(f"kind='encode' needs a crop >= 1, got {self.crop}.")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """[H, W, C] of the reference pixels."""
    if self.kind == "data":
      return tuple(int(d) for d in self.options.image_shape)
    return self.crop, self.crop, 3

  @property
  def description(self) -> dict:
    """What identifies the reference images (with the feature network's
    description, the key of the cached statistics).

    "data" keeps the keys dataset, split and image shape; "encode" adds its
    name and the crop, so that it never shares an entry with the same images
    used as a pixel dataset.
    """
    out = dict(
      dataset=self.options.name,
      split=self.options.eval_split,
      image_shape=list(self.image_shape),
    )
    if self.kind == "encode":
      out.update(reference_data="encode", center_crop=self.crop)
    return out

  def open(self):
    """The reference split's source (raises the dataset's missing-data
    error)."""
    try:
      return sources.load_split(self.options, sources.EVAL_FIELD)
    except DataError as err:
      if self.kind == "data":
        raise
      raise DataError(f"FID reference images ({self.label}): {err}") from err

  def check(self) -> None:
    """Raises now, not after training, when the images are missing."""
    self.open()

  def pixel_batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """Yields the reference images as uint8 [<= batch_size, H, W, C]."""
    if self.kind == "data":
      mean, std = normalisation(self.options)
      for batch in data.make_eval_batches(self.options, batch_size=batch_size):
        mask = np.asarray(batch["mask"], bool)
        yield to_pixels(batch["image"][mask], mean, std)
      return
    source = self.open()
    for start in range(0, len(source), batch_size):
      stop = min(start + batch_size, len(source))
      yield np.stack(
        [center_crop(source[i]["image"], self.crop) for i in range(start, stop)]
      )
