"""What a configured dataset looks like: `DatasetInfo` and normalisation."""

import dataclasses

from dblocks_jax.data import sources
from dblocks_jax.data.options import DataOptions
from dblocks_jax.errors import ConfigError

# Per-channel mean and standard deviation of the train pixels, in [0, 1] units.
_STATS = {
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
  "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
  "fashion_mnist": ((0.2860,), (0.3530,)),
  "fashion_mnist_idx": ((0.2860,), (0.3530,)),
  # Computed from the 1,497 train digits; tests check it against the data.
  "digits": ((0.3058,), (0.3759,)),
  "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NORMALISATIONS = ("dataset", "symmetric")
_SYNTHETIC_MEAN = 0.5
_SYNTHETIC_STD = 0.25


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """A dataset as the model sees it.

  Attributes:
    name: `data.name`.
    num_classes: number of labels; labels are 0..num_classes-1.
    image_shape: (height, width, channels) after preprocessing.
    num_train: examples in `data.train_split`, over all processes.
    num_eval: examples in `data.eval_split`.
    mean: per-channel normalisation mean, in [0, 1] pixel units.
    std: per-channel normalisation standard deviation, in [0, 1] units.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int
  mean: tuple[float, ...]
  std: tuple[float, ...]


def normalisation(
  data_config: DataOptions,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Returns (mean, std) per channel, reading no data.

  `data.normalisation` "dataset" (default) uses the statistics of
  `data.name`; "symmetric" maps pixels to [-1, 1] (mean 0.5, std 0.5), the
  data space of diffusion models (DiT, EDM).
  """
  name = sources.check_name(data_config)
  kind = data_config.normalisation
  if kind not in NORMALISATIONS:
    raise ConfigError(
      f"data.normalisation={kind!r} is unknown; choose one of {NORMALISATIONS}."
    )
  if kind == "symmetric" or name == "latents":
    channels = int(data_config.image_shape[-1])
    if kind == "symmetric":
      return (0.5,) * channels, (0.5,) * channels
    return (0.0,) * channels, (1.0,) * channels  # Latents, used as stored.
  if name == "synthetic":
    channels = sources.synthetic_shape(data_config)[-1]
    return (_SYNTHETIC_MEAN,) * channels, (_SYNTHETIC_STD,) * channels
  return _STATS[name]


def dataset_info(data_config: DataOptions) -> DatasetInfo:
  """Describes the configured dataset.

  TFDS datasets are described from their prepared metadata without reading
  examples. Raises `DataError` with the fix when the dataset is unknown,
  missing, or lacks a configured split.

  Args:
    data_config: the `data` config (`name`, `dir`, `train_split`,
      `eval_split`, and the `synthetic_*` fields for `synthetic`).
  """
  found = sources.describe(data_config)
  mean, std = normalisation(data_config)
  return DatasetInfo(
    name=data_config.name, mean=mean, std=std, **found._asdict()
  )
