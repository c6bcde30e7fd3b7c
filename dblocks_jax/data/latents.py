"""Latent datasets: the VAE posteriors of an image dataset, on disk.

Written once by `--mode=encode` (`dblocks_jax.cli.encode`) and read by
`data.name="latents"` with `data.dir` pointing at the directory:

  DIR/meta.json                    latent shape, classes, scaling factor,
                                   views, the VAE and source, split sizes
  DIR/<split>/shard-NNNNN-mean.npy   [n, views, h, w, c] float16
  DIR/<split>/shard-NNNNN-std.npy    [n, views, h, w, c] float16
  DIR/<split>/shard-NNNNN-label.npy  [n] int32 (written last: a shard with a
                                   label file is complete)

A view is one preprocessed image: the centre crop and, with `flip`, its
mirror (a latent of a flipped image is not the flipped latent, so flips are
encoded rather than applied to latents). Training draws a view and a sample
of its posterior, z = scaling_factor * (mean + std * eps), as DiT's
`train.py` does with `latent_dist.sample() * 0.18215`.
"""

import json
import math
import os
from typing import Any

import grain
import numpy as np

from dblocks_jax.errors import DataError

META = "meta.json"
FORMAT = "dblocks_jax latents v1"
# (kind, dtype) of the three files of a shard; label is written last.
_KINDS = (("mean", np.float16), ("std", np.float16), ("label", np.int32))
_FIX = "re-encode it with --mode=encode into an empty data.dir"


def shard_path(directory: str, split: str, index: int, kind: str) -> str:
  return os.path.join(directory, split, f"shard-{index:05d}-{kind}.npy")


def damaged(path: str, what: str) -> DataError:
  """The error for a file of a latent dataset that cannot be read."""
  return DataError(f"{path} is damaged ({what}); {_FIX}")


def _is_int(value: Any, low: int) -> bool:
  return type(value) is int and value >= low


def _check_meta(meta: Any, path: str) -> None:
  """Raises unless the fields that readers use have the types they need."""
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise damaged(path, f"not a {FORMAT!r} meta file")
  shape = meta.get("latent_shape")
  if not (
    isinstance(shape, list)
    and len(shape) == 3
    and all(_is_int(d, 1) for d in shape)
  ):
    raise damaged(
      path, f"latent_shape={shape!r} is not [height, width, channels]"
    )
  for key, low in (("num_classes", 1), ("views", 1)):
    if not _is_int(meta.get(key), low):
      raise damaged(path, f"{key}={meta.get(key)!r} is not an integer >= {low}")
  if type(meta.get("scaling_factor")) not in (int, float):
    raise damaged(
      path, f"scaling_factor={meta.get('scaling_factor')!r} is not a number"
    )
  splits = meta.get("splits")
  if not isinstance(splits, dict) or not all(
    isinstance(v, dict) for v in splits.values()
  ):
    raise damaged(path, f"splits={splits!r} is not a mapping of splits")
  for name, entry in splits.items():
    if not entry.get("complete"):
      continue
    sizes, count = entry.get("shard_sizes"), entry.get("num_examples")
    if not (
      isinstance(sizes, list)
      and all(_is_int(n, 1) for n in sizes)
      and _is_int(count, 0)
      and sum(sizes) == count
    ):
      raise damaged(
        path,
        f"split {name!r}: shard_sizes={sizes!r} do not add up to "
        f"num_examples={count!r}",
      )


def read_meta(directory: str) -> dict[str, Any]:
  """The dataset's meta.json, or an error that says how to make one."""
  path = os.path.join(directory or "", META)
  if not directory or not os.path.exists(path):
    raise DataError(
      f"data.dir={directory!r} holds no latent dataset ({META} missing);"
      " write one with --mode=encode (see configs/dit_imagenet.py) and set"
      " data.dir to its directory."
    )
  path = os.path.abspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError.
    raise damaged(path, f"not JSON: {e}") from e
  _check_meta(meta, path)
  return meta


def check_split(meta: dict, directory: str, split: str) -> dict:
  splits = meta.get("splits", {})
  if split not in splits or not splits[split].get("complete"):
    raise DataError(
      f"latent dataset {directory} has no complete split {split!r} (has"
      f" {sorted(k for k, v in splits.items() if v.get('complete'))});"
      " finish it with --mode=encode or choose another data split."
    )
  return splits[split]


def _check_npy(path: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
  """Raises unless the .npy file holds `dtype` `shape` and all its bytes.

  Reads only the header and the file size: a truncated shard is reported
  when the source opens, not when a worker reaches its last example.
  """
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        found_shape, _, found_dtype = np.lib.format.read_array_header_1_0(f)
      elif version == (2, 0):
        found_shape, _, found_dtype = np.lib.format.read_array_header_2_0(f)
      else:
        raise ValueError(f"unsupported .npy version {version}")
      offset, size = f.tell(), os.fstat(f.fileno()).st_size
  except FileNotFoundError as e:
    raise DataError(
      f"{path} is missing, but {META} lists its split as complete; {_FIX}"
    ) from e
  except (ValueError, TypeError, SyntaxError) as e:
    raise damaged(path, f"not a .npy array: {e}") from e
  if found_shape != shape or found_dtype != dtype:
    raise damaged(
      path,
      f"holds {found_dtype} {list(found_shape)}, but {META} needs"
      f" {np.dtype(dtype)} {list(shape)}",
    )
  needed = offset + math.prod(shape) * np.dtype(dtype).itemsize
  if size != needed:
    raise damaged(path, f"{size} bytes, but its header needs {needed}")


class LatentSource:
  """Random access over one split: {"mean", "std": [views, h, w, c]
  float16, "label": int}. Shards are memory-mapped on first use; their
  headers and sizes are checked on construction."""

  def __init__(self, directory: str, split: str):
    meta = read_meta(directory)
    entry = check_split(meta, directory, split)
    self.directory, self.split = directory, split
    self.sizes = [int(n) for n in entry["shard_sizes"]]
    self.starts = np.cumsum([0] + self.sizes)
    self.latent_shape = tuple(meta["latent_shape"])
    self.num_classes = int(meta["num_classes"])
    views = int(meta["views"])
    for index, size in enumerate(self.sizes):
      for kind, dtype in _KINDS:
        shape = (
          (size,) if kind == "label" else (size, views, *self.latent_shape)
        )
        _check_npy(self._path(index, kind), dtype, shape)
    self._arrays: dict[int, tuple] = {}

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _path(self, index: int, kind: str) -> str:
    return os.path.abspath(shard_path(self.directory, self.split, index, kind))

  def _shard(self, index: int):
    if index not in self._arrays:
      arrays = []
      for kind, _ in _KINDS:
        path = self._path(index, kind)
        try:
          arrays.append(np.load(path, mmap_mode="r"))
        except (OSError, ValueError) as e:  # Damaged since construction.
          raise damaged(path, f"{type(e).__name__}: {e}") from e
      self._arrays[index] = tuple(arrays)
    return self._arrays[index]

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(index)
    shard = int(np.searchsorted(self.starts, index, side="right") - 1)
    mean, std, label = self._shard(shard)
    offset = index - self.starts[shard]
    label = int(label[offset])
    if not 0 <= label < self.num_classes:
      raise damaged(
        self._path(shard, "label"),
        f"label {label} at row {offset} is not in [0, {self.num_classes})",
      )
    return {
      "mean": np.asarray(mean[offset]),
      "std": np.asarray(std[offset]),
      "label": label,
    }

  def __getstate__(self):  # Worker processes re-open the memory maps.
    return dict(self.__dict__, _arrays={})


class SampleLatent(grain.transforms.RandomMap):
  """Each example's random view and a sample of its posterior, scaled: a
  batch `{"mean", "std": [batch, views, h, w, c], "label": [batch]}` ->
  `{"image": [batch, h, w, c] float32, "label": [batch] int32}`."""

  def __init__(self, scaling_factor: float):
    self.scaling_factor = float(scaling_factor)

  def random_map(self, element, rng: np.random.Generator):
    batch, views = element["mean"].shape[:2]
    view = rng.integers(views, size=batch)
    rows = np.arange(batch)
    mean = element["mean"][rows, view].astype(np.float32)
    std = element["std"][rows, view].astype(np.float32)
    z = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
    return {
      "image": self.scaling_factor * z,
      "label": np.asarray(element["label"], np.int32),
    }


class LatentMean(grain.transforms.Map):
  """The first view's posterior mean, scaled (evaluation, no noise)."""

  def __init__(self, scaling_factor: float):
    self.scaling_factor = float(scaling_factor)

  def map(self, element):
    mean = element["mean"][0].astype(np.float32)
    return {
      "image": self.scaling_factor * mean,
      "label": np.int32(element["label"]),
    }
