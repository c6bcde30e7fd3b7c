"""Chooses the reader for `data.name` and returns sources and their sizes."""

from typing import Any, NamedTuple

from dblocks_jax.data import (
  arrays,
  digits,
  idx,
  latents,
  synthetic,
  tfds_sources,
  tiny_imagenet,
)
from dblocks_jax.data.options import DataOptions
from dblocks_jax.errors import DataError

# imagenet2012 has images of many sizes: a source for --mode=encode only.
TFDS_DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagenet2012")
DATASETS = (
  *TFDS_DATASETS,
  "fashion_mnist_idx",
  "digits",
  "tiny_imagenet",
  "synthetic",
  "latents",
)
# The config fields that name the two splits.
TRAIN_FIELD = "train_split"
EVAL_FIELD = "eval_split"


class Description(NamedTuple):
  """What a dataset looks like, without its pixels."""

  image_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_eval: int


def check_name(data_config: DataOptions) -> str:
  """Returns `data.name`, or raises when it is not a supported dataset."""
  name = data_config.name
  if name not in DATASETS:
    raise DataError(
      f"data.name={name!r} is not a known dataset; choose one of: "
      f"{', '.join(DATASETS)}"
    )
  return name


def synthetic_shape(data_config: DataOptions) -> tuple[int, ...]:
  """Returns `data.synthetic_image_shape` as (height, width, channels)."""
  shape = tuple(int(d) for d in data_config.synthetic_image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise DataError(
      f"data.synthetic_image_shape={shape} must be (height, width, channels) "
      "with positive sizes"
    )
  return shape


def _synthetic(
  data_config: DataOptions, field: str
) -> synthetic.SyntheticSource:
  split = getattr(data_config, field)
  if split not in synthetic.SPLITS:
    raise arrays.unknown_split(field, split, "synthetic", synthetic.SPLITS)
  num_classes = int(data_config.synthetic_num_classes)
  if num_classes < 1:
    raise DataError(
      f"data.synthetic_num_classes={num_classes} must be at least 1"
    )
  size_field = f"synthetic_num_{'train' if split == 'train' else 'eval'}"
  num_examples = int(getattr(data_config, size_field))
  if num_examples < 1:
    raise DataError(f"data.{size_field}={num_examples} must be at least 1")
  return synthetic.SyntheticSource(
    num_classes, synthetic_shape(data_config), num_examples, split
  )


def load_split(data_config: DataOptions, field: str) -> Any:
  """Returns a random-access source over the split that `data.<field>` names.

  A split may be a slice of one, in TFDS's syntax, for every dataset but
  `latents` and `synthetic`: `train[:90%]` and `train[90%:]` hold out the
  last tenth of the training images (a validation split).

  Args:
    data_config: the `data` config.
    field: `train_split` or `eval_split`.

  Returns:
    A source: `len()` and `[index]` giving `{"image": [height, width,
    channels] uint8, "label": int, ...}` (TFDS examples may hold more keys).
  """
  name = check_name(data_config)
  split = getattr(data_config, field)
  if name in TFDS_DATASETS:  # TFDS reads `train[:90%]` itself.
    return tfds_sources.load(name, split, data_config.dir, field)
  if name == "latents":
    return latents.LatentSource(data_config.dir, split)
  whole, _, _ = arrays.parse_split(split)
  if name == "fashion_mnist_idx":
    source = idx.load(data_config.dir, whole, field)
  elif name == "digits":
    source = digits.load(whole, field)
  elif name == "tiny_imagenet":
    source = tiny_imagenet.load(data_config.dir, whole, field)
  else:
    return _synthetic(data_config, field)
  return arrays.slice_source(source, split, field)


def describe(data_config: DataOptions) -> Description:
  """Returns image shape, class count and split sizes of `data.name`.

  TFDS datasets are described from their metadata; the others from their
  (cached) index or arrays.
  """
  name = check_name(data_config)
  fields = (TRAIN_FIELD, EVAL_FIELD)
  if name in TFDS_DATASETS:
    splits = [(getattr(data_config, f), f) for f in fields]
    found = tfds_sources.describe(name, splits, data_config.dir)
    return Description(
      found.image_shape, found.num_classes, *found.num_examples
    )
  if name == "synthetic":
    train, test = (_synthetic(data_config, f) for f in fields)
    return Description(
      train.image_shape, train.num_classes, len(train), len(test)
    )
  if name == "latents":
    meta = latents.read_meta(data_config.dir)
    latents.check_split(meta, data_config.dir, data_config.train_split)
    sizes = [
      meta["splits"].get(getattr(data_config, f), {}).get("num_examples", 0)
      for f in fields
    ]
    return Description(
      tuple(meta["latent_shape"]), int(meta["num_classes"]), *sizes
    )
  if name == "tiny_imagenet":
    train, test = (load_split(data_config, f) for f in fields)
    num_classes = tiny_imagenet.num_classes(data_config.dir)
    return Description(
      tiny_imagenet.IMAGE_SHAPE, num_classes, len(train), len(test)
    )
  train, test = (load_split(data_config, f) for f in fields)
  num_classes = {
    "fashion_mnist_idx": idx.NUM_CLASSES,
    "digits": digits.NUM_CLASSES,
  }[name]
  return Description(
    tuple(train.images.shape[1:]), num_classes, len(train), len(test)
  )
