"""FID reference images: which images, as uint8 pixel batches, and their key.

`eval.reference_data` chooses them; the split is `eval.reference_split`:

  "data": the dataset itself (`data`), mapped back to pixels; for pixel
    datasets.
  "encode": the images that `--mode=encode` reads (`encode.images`),
    centre-cropped to `encode.image_size` by `encode.center_crop`, the
    pixels the VAE saw; for latent datasets, whose samples are decoded to
    such pixels before the feature network.
  "": "encode" for a latent dataset, "data" otherwise.
"""

from collections.abc import Iterator

import numpy as np

from dblocks_jax import data
from dblocks_jax.cli.encode import center_crop
from dblocks_jax.data import sources
from dblocks_jax.data.info import normalisation
from dblocks_jax.data.options import DataOptions
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.evaluate.pixels import is_latent, pixel_shape, to_pixels

CHOICES = ("", "data", "encode")


def kind(config) -> str:
  """`eval.reference_data` with "" resolved: "data" or "encode"."""
  name = config.eval.get("reference_data", "")
  if name not in CHOICES:
    raise ConfigError(
      f"eval.reference_data={name!r} is unknown; choose one of {CHOICES}."
    )
  name = name or ("encode" if is_latent(config) else "data")
  if name == "data" and is_latent(config):
    raise ConfigError(
      "eval.reference_data='data' would compare pixels with latents; use"
      " 'encode' (or '') for a latent dataset."
    )
  if name == "encode" and "encode" not in config:
    raise ConfigError(
      "eval.reference_data='encode' needs the encode.* fields of a latent"
      " config; use 'data' (or '')."
    )
  return name


def _split_config(config, name: str):
  """The data config of the reference images, its eval split the reference."""
  source = config.data if name == "data" else config.encode.images
  options = DataOptions.from_mapping(source)
  return options.replace(eval_split=config.eval.reference_split)


def description(config) -> dict:
  """What identifies the reference images (with the feature network's
  description, the key of the cached statistics).

  "data" keeps the keys dataset, split and image shape; "encode" adds its
  name and the crop, so that it never shares an entry with the same images
  used as a pixel dataset.
  """
  name = kind(config)
  split = config.eval.reference_split
  if name == "data":
    shape = list(config.data.image_shape)
    return dict(dataset=config.data.name, split=split, image_shape=shape)
  size = int(config.encode.image_size)
  sample = list(pixel_shape(config))
  if sample != [size, size, 3]:
    raise ConfigError(
      f"eval.reference_data='encode' crops to {size}x{size} but the decoded"
      f" samples are {sample}; set encode.image_size to the decoded size."
    )
  return dict(
    dataset=config.encode.images.name,
    split=split,
    image_shape=sample,
    reference_data="encode",
    center_crop=size,
  )


def _open(config, name: str):
  """The reference split's source (raises the dataset's missing-data error)."""
  try:
    return sources.load_split(_split_config(config, name), sources.EVAL_FIELD)
  except DataError as err:
    if name == "data":
      raise
    raise DataError(
      f"FID reference images (encode.images, eval.reference_split="
      f"{config.eval.reference_split!r}): {err}"
    ) from err


def check(config) -> None:
  """Raises now, not after training, when the reference images are missing."""
  _open(config, kind(config))


def pixel_batches(config, batch_size: int) -> Iterator[np.ndarray]:
  """Yields the reference images as uint8 [<= batch_size, H, W, C]."""
  name = kind(config)
  if name == "data":
    split_config = _split_config(config, name)
    mean, std = normalisation(split_config)
    for batch in data.make_eval_batches(split_config, batch_size=batch_size):
      mask = np.asarray(batch["mask"], bool)
      yield to_pixels(batch["image"][mask], mean, std)
    return
  description(config)  # Checks the crop against the decoded samples.
  source, size = _open(config, name), int(config.encode.image_size)
  for start in range(0, len(source), batch_size):
    stop = min(start + batch_size, len(source))
    yield np.stack(
      [center_crop(source[i]["image"], size) for i in range(start, stop)]
    )
