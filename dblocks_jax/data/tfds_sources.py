"""Reads TFDS datasets prepared as ArrayRecord files, without TensorFlow."""

import glob
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import tensorflow_datasets as tfds
from google.protobuf import json_format

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


def _rebuild(name: str, data_dir: str) -> str:
  return (
    f"rebuild it with `{build_command(name, data_dir)}` into an empty data.dir"
  )


def _first_line(err: BaseException) -> str:
  return (str(err).splitlines() or [type(err).__name__])[0]


def _builder(name: str, data_dir: str) -> Any:
  try:
    return tfds.builder(name, data_dir=data_dir or None)
  except (json_format.Error, ValueError, OSError) as err:
    # A prepared dataset whose dataset_info.json is garbled or truncated.
    root = data_dir or tfds.core.constants.DATA_DIR
    found = glob.glob(os.path.join(root, name, "*", "dataset_info.json"))
    path = found[0] if len(found) == 1 else os.path.join(root, name)
    raise DataError(
      f"{path} is damaged ({_first_line(err)}); {_rebuild(name, data_dir)}"
    ) from err


class CheckedSource:
  """A TFDS source whose read errors name the damaged file and the fix.

  ArrayRecord files are checksummed per chunk: a garbled or truncated file
  raises RuntimeError on the examples it holds, or yields empty examples.
  """

  def __init__(self, source: Any, name: str, data_dir: str):
    self.source, self.name, self.data_dir = source, name, data_dir

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Any:
    try:
      example = self.source[index]
    except (RuntimeError, ValueError) as err:
      raise self._damaged(index, _first_line(err)) from err
    if example.get("image") is None or example.get("label") is None:
      raise self._damaged(index, f"example {index} decodes as empty")
    return example

  def _file(self, index: int) -> str:
    """The file that holds example `index` (or the split, if unknown)."""
    split = getattr(self.source, "split", "?")
    try:
      info = self.source.dataset_info.splits[split]
      for instruction in info.file_instructions:
        if index < instruction.take:
          return str(instruction.filename)
        index -= instruction.take
    except (AttributeError, KeyError, ValueError):
      pass
    return f"split {split!r} of {self.name} in {_where(self.data_dir)}"

  def _damaged(self, index: int, what: str) -> DataError:
    return DataError(
      f"{self._file(index)} is damaged ({what}); "
      f"{_rebuild(self.name, self.data_dir)}"
    )

  def __repr__(self) -> str:
    return f"CheckedSource({self.source!r})"


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
      f"{_rebuild(name, data_dir)}"
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
    source = tfds.data_source(
      name, split=split, data_dir=data_dir or None, download=False
    )
  except Exception as err:
    if not builder.is_prepared():
      raise _not_prepared(name, data_dir) from err
    raise DataError(
      f"cannot read data.{field}={split!r} of {name} in {_where(data_dir)}: "
      f"{_first_line(err)}"
    ) from err
  return CheckedSource(source, name, data_dir)


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
  if None in features["image"].shape:  # Images of many sizes (ImageNet).
    if not builder.is_prepared():
      raise _not_prepared(name, data_dir)
    raise DataError(
      f"{name} has images of many sizes {features['image'].shape}; it is a"
      " source for --mode=encode (data.name=latents trains on its latents)"
    )
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
