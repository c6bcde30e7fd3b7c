"""Latent datasets: the VAE posteriors of an image dataset, on disk.

Written once by `--mode=encode` (`dblocks_jax.encode`) and read by
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
import os
from typing import Any

import grain
import numpy as np

from dblocks_jax.errors import DataError

META = "meta.json"
FORMAT = "dblocks_jax latents v1"


def shard_path(directory: str, split: str, index: int, kind: str) -> str:
  return os.path.join(directory, split, f"shard-{index:05d}-{kind}.npy")


def read_meta(directory: str) -> dict[str, Any]:
  """The dataset's meta.json, or an error that says how to make one."""
  path = os.path.join(directory or "", META)
  if not directory or not os.path.exists(path):
    raise DataError(
      f"data.dir={directory!r} holds no latent dataset ({META} missing);"
      " write one with --mode=encode (see configs/dit_imagenet.py) and set"
      " data.dir to its directory."
    )
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise DataError(f"{path} is not a {FORMAT!r} meta file")
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


class LatentSource:
  """Random access over one split: {"mean", "std": [views, h, w, c]
  float16, "label": int}. Shards are memory-mapped on first use."""

  def __init__(self, directory: str, split: str):
    meta = read_meta(directory)
    entry = check_split(meta, directory, split)
    self.directory, self.split = directory, split
    self.sizes = [int(n) for n in entry["shard_sizes"]]
    self.starts = np.cumsum([0] + self.sizes)
    self.latent_shape = tuple(meta["latent_shape"])
    self.num_classes = int(meta["num_classes"])
    self._arrays: dict[int, tuple] = {}

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _shard(self, index: int):
    if index not in self._arrays:
      self._arrays[index] = tuple(
        np.load(
          shard_path(self.directory, self.split, index, kind), mmap_mode="r"
        )
        for kind in ("mean", "std", "label")
      )
    return self._arrays[index]

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(index)
    shard = int(np.searchsorted(self.starts, index, side="right") - 1)
    mean, std, label = self._shard(shard)
    offset = index - self.starts[shard]
    return {
      "mean": np.asarray(mean[offset]),
      "std": np.asarray(std[offset]),
      "label": int(label[offset]),
    }

  def __getstate__(self):  # Worker processes re-open the memory maps.
    return dict(self.__dict__, _arrays={})


class SampleLatent(grain.transforms.RandomMap):
  """A random view's posterior sample, scaled: {"image": [h, w, c] float32,
  "label": int32}."""

  def __init__(self, scaling_factor: float):
    self.scaling_factor = float(scaling_factor)

  def random_map(self, element, rng: np.random.Generator):
    view = rng.integers(element["mean"].shape[0])
    mean = element["mean"][view].astype(np.float32)
    std = element["std"][view].astype(np.float32)
    z = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
    return {
      "image": self.scaling_factor * z,
      "label": np.int32(element["label"]),
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
