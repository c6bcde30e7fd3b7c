"""Reads TFDS datasets prepared as ArrayRecord files, without TensorFlow."""

from collections.abc import Sequence
from typing import Any, NamedTuple

import tensorflow_datasets as tfds

from dblocks_jax.data import arrays
from dblocks_jax.errors import DataError

# File formats that `tfds.data_source` can read by index.
_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


class Description(NamedTuple):
  image_shape: tuple[int, int, int]
  num_classes: int
  num_examples: tuple[int, ...]


def build_command(name: str, data_dir: str) -> str:
  """Returns the shell command that prepares `name` for reading."""
  command = f"tfds build {name} --file_format=array_record"
  if data_dir:
    command += f" --data_dir={data_dir}"
  return command


def _where(data_dir: str) -> str:
  return data_dir or "the default TFDS data dir (~/tensorflow_datasets)"


def _not_prepared(name: str, data_dir: str) -> DataError:
  return DataError(
    f"data.name={name!r} is not prepared in {_where(data_dir)}; build it once "
    f"with `{build_command(name, data_dir)}` (building image datasets needs "
    "TensorFlow once: `pip install tensorflow-cpu`; reading them does not), "
    "or set data.dir to where it is prepared"
  )


def _builder(name: str, data_dir: str) -> Any:
  return tfds.builder(name, data_dir=data_dir or None)


def _base_splits(split: str) -> list[str]:
  """Returns the split names in a TFDS split spec like 'train[:90%]+test'."""
  return [part.split("[")[0].strip() for part in split.split("+")]


def _format_name(file_format: Any) -> str:
  # Datasets prepared by old TFDS versions record no format: TFRecord.
  return str(getattr(file_format, "value", file_format) or "tfrecord")


def _check_prepared(builder: Any, name: str, data_dir: str) -> None:
  """Raises unless a prepared dataset can be read by index."""
  if not builder.is_prepared():
    raise _not_prepared(name, data_dir)
  info = builder.info
  formats = [info.file_format, *getattr(info, "alternative_file_formats", [])]
  if not any(_format_name(f) in _RANDOM_ACCESS_FORMATS for f in formats):
    raise DataError(
      f"data.name={name!r} is prepared in {_where(data_dir)} as "
      f"{_format_name(info.file_format)}, which cannot be read by index; "
      f"rebuild it with `{build_command(name, data_dir)}` into an empty "
      "data.dir"
    )


def _check_split(builder: Any, name: str, split: str, field: str) -> None:
  """Raises when a prepared dataset lacks a split that `split` names."""
  known = list(builder.info.splits.keys())
  if any(base not in known for base in _base_splits(split)):
    raise arrays.unknown_split(field, split, name, sorted(known))


def load(name: str, split: str, data_dir: str, field: str) -> Sequence[Any]:
  """Returns a random-access source over one split.

  Examples are `{"image": [height, width, channels] uint8, "label": int64,
  ...}`, possibly with more keys (cifar10 has an `id`).

  Args:
    name: the TFDS name, e.g. `cifar10`.
    split: a TFDS split spec, e.g. `train` or `train[:90%]`.
    data_dir: `data.dir`, or '' for the TFDS default.
    field: the config field that named the split, for error messages.
  """
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    _check_prepared(builder, name, data_dir)
    _check_split(builder, name, split, field)
  try:
    return tfds.data_source(
      name, split=split, data_dir=data_dir or None, download=False
    )
  except Exception as err:
    if not builder.is_prepared():
      raise _not_prepared(name, data_dir) from err
    first_line = (str(err).splitlines() or [type(err).__name__])[0]
    raise DataError(
      f"cannot read data.{field}={split!r} of {name} in {_where(data_dir)}: "
      f"{first_line}"
    ) from err


def describe(
  name: str, splits: Sequence[tuple[str, str]], data_dir: str
) -> Description:
  """Returns shapes and sizes from the builder's metadata.

  A prepared dataset is not read: the sizes come from its `dataset_info.json`.
  An unprepared one raises the not-prepared error, unless `tfds.data_source`
  still works (as under `tfds.testing.mock_data`), in which case the sizes
  are the lengths of its sources.

  Args:
    name: the TFDS name.
    splits: (split spec, config field) pairs whose sizes to return.
    data_dir: `data.dir`, or '' for the TFDS default.
  """
  builder = _builder(name, data_dir)
  features = builder.info.features
  image_shape = tuple(int(d) for d in features["image"].shape)
  num_classes = int(features["label"].num_classes)
  if builder.is_prepared():
    _check_prepared(builder, name, data_dir)
    counts = []
    for split, field in splits:
      _check_split(builder, name, split, field)
      counts.append(int(builder.info.splits[split].num_examples))
  else:
    counts = [
      len(load(name, split, data_dir, field)) for split, field in splits
    ]
  return Description(image_shape, num_classes, tuple(counts))
