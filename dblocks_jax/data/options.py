"""What an image pipeline reads: one frozen record, filled by the config
layer (`DataOptions.from_mapping(config.data)`), read by the data modules."""

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """An image dataset and its augmentation.

  Attributes:
    name: the dataset (`data.sources.DATASETS`).
    dir: where it lives ("" = the dataset's default location).
    image_shape: (H, W, C) of the examples.
    num_classes: classes of the labels.
    train_split: the split to train on.
    eval_split: the split to evaluate on.
    normalisation: "dataset" ((x - mean) / std with the dataset's
      statistics) or "symmetric" (pixels in [-1, 1]).
    crop_padding: padded random crop (0 = none).
    flip: random horizontal flips.
    random_resized_crop: RandomResizedCrop (Tiny-ImageNet).
    randaugment: RandAugment (torchvision semantics).
    randaugment_num_ops: RandAugment's N.
    randaugment_magnitude: RandAugment's M.
    num_workers: 0 = in-process; > 0 = grain worker processes.
    synthetic_num_classes: classes of the synthetic dataset.
    synthetic_image_shape: (H, W, C) of the synthetic dataset.
    synthetic_num_train: synthetic train examples.
    synthetic_num_eval: synthetic eval examples.
  """

  name: str
  dir: str = ""
  image_shape: tuple[int, int, int] = (32, 32, 3)
  num_classes: int = 10
  train_split: str = "train"
  eval_split: str = "test"
  normalisation: str = "dataset"
  crop_padding: int = 0
  flip: bool = False
  random_resized_crop: bool = False
  randaugment: bool = False
  randaugment_num_ops: int = 2
  randaugment_magnitude: int = 9
  num_workers: int = 0
  synthetic_num_classes: int = 10
  synthetic_image_shape: tuple[int, int, int] = (32, 32, 3)
  synthetic_num_train: int = 2048
  synthetic_num_eval: int = 256

  @classmethod
  def from_mapping(cls, values) -> "DataOptions":
    """From a mapping with these fields (e.g. a config's `data`); unknown
    fields are an error."""
    if not isinstance(values, Mapping):
      values = values.to_dict()
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(
        f"data fields {unknown} are unknown; known: {sorted(fields)}."
      )
    values = {
      k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
    }
    return cls(**values)

  def replace(self, **changes) -> "DataOptions":
    return dataclasses.replace(self, **changes)
