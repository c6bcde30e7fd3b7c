"""Grain transforms of whole batches: train augmentation and normalisation."""

from typing import Any

import grain
import numpy as np

from dblocks_jax.data import randaugment as randaugment_lib
from dblocks_jax.data import transforms
from dblocks_jax.data.options import DataOptions
from dblocks_jax.errors import ConfigError


class Augment(grain.transforms.RandomMap):
  """Random train augmentation of a batch, each image drawn independently,
  in this order when enabled.

  RandomResizedCrop, padded random crop, horizontal flip, RandAugment. Input
  and output batches are `{"image": [batch, height, width, channels] uint8,
  "label": [batch] int}`; other keys are dropped. The crop and the flip are
  one array operation per batch; RandomResizedCrop and RandAugment (PIL)
  go image by image.
  """

  def __init__(
    self,
    *,
    random_resized_crop: bool = False,
    crop_padding: int = 0,
    flip: bool = False,
    randaugment: bool = False,
    randaugment_num_ops: int = 2,
    randaugment_magnitude: int = 9,
  ):
    if crop_padding < 0:
      raise ConfigError(
        f"data.crop_padding={crop_padding} must be 0 (no crop) or positive"
      )
    if randaugment and randaugment_num_ops < 0:
      raise ConfigError(
        f"data.randaugment_num_ops={randaugment_num_ops} must be >= 0"
      )
    if (
      randaugment and not 0 <= randaugment_magnitude < randaugment_lib.NUM_BINS
    ):
      raise ConfigError(
        f"data.randaugment_magnitude={randaugment_magnitude} must be in "
        f"0..{randaugment_lib.NUM_BINS - 1}"
      )
    self.random_resized_crop = random_resized_crop
    self.crop_padding = crop_padding
    self.flip = flip
    self.randaugment = randaugment
    self.randaugment_num_ops = randaugment_num_ops
    self.randaugment_magnitude = randaugment_magnitude

  @classmethod
  def from_config(cls, data_config: DataOptions) -> "Augment":
    """Reads the augmentation fields of the `data` config."""
    return cls(
      random_resized_crop=bool(data_config.random_resized_crop),
      crop_padding=int(data_config.crop_padding),
      flip=bool(data_config.flip),
      randaugment=bool(data_config.randaugment),
      randaugment_num_ops=int(data_config.randaugment_num_ops),
      randaugment_magnitude=int(data_config.randaugment_magnitude),
    )

  def random_map(
    self, element: dict[str, Any], rng: np.random.Generator
  ) -> dict[str, Any]:
    images = np.asarray(element["image"], dtype=np.uint8)
    if self.random_resized_crop:
      images = np.stack(
        [transforms.random_resized_crop(image, rng) for image in images]
      )
    images = transforms.pad_and_crop(images, self.crop_padding, rng)
    if self.flip:
      images = transforms.random_flip(images, rng)
    if self.randaugment:
      images = np.stack(
        [
          randaugment_lib.rand_augment(
            image,
            rng,
            num_ops=self.randaugment_num_ops,
            magnitude=self.randaugment_magnitude,
          )
          for image in images
        ]
      )
    return {"image": images, "label": element["label"]}


class Normalise(grain.transforms.Map):
  """Scales pixels to `(x / 255 - mean) / std` and labels to int32.

  Works on one example or a batch: output `{"image": [..., height, width,
  channels] float32, "label": [...] int32}`; other keys are dropped.
  """

  def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
    """Keeps per-channel statistics in [0, 1] pixel units."""
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    image = np.asarray(element["image"], dtype=np.uint8)
    return {
      "image": transforms.normalise(image, self.mean, self.std),
      "label": np.asarray(element["label"], np.int32),
    }
