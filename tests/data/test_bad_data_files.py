"""Truncated or garbled dataset files: a one-line DataError naming the file
and the fix, never a traceback from gzip, numpy, json, PIL or ArrayRecord."""

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dblocks_jax.data import digits, idx, latents, tfds_sources, tiny_imagenet
from dblocks_jax.errors import ConfigError, DataError

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def truncate(path, size=None) -> None:
  """Cuts a file to `size` bytes (default: half)."""
  path = str(path)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2 if size is None else size])


def garble(path, at=None, count=32, byte=b"\xff") -> None:
  """Overwrites `count` bytes at `at` (default: the middle) with `byte`s."""
  path = str(path)
  with open(path, "rb") as f:
    data = f.read()
  at = len(data) // 2 if at is None else at
  with open(path, "wb") as f:
    f.write(data[:at] + byte * count + data[at + count :])


def assert_names(error, path, *fragments) -> str:
  """The error is one line that names `path`; returns (and prints) it."""
  message = str(error.value)
  print(message)
  assert isinstance(error.value, DataError) and "\n" not in message
  assert str(path) in message, message
  for fragment in fragments:
    assert fragment in message, message
  return message


# Fashion-MNIST IDX files.


def write_idx(path, array: np.ndarray) -> None:
  """Writes an IDX file of unsigned bytes, gzip-compressed for `.gz`."""
  header = bytes([0, 0, 0x08, array.ndim])
  header += np.asarray(array.shape, dtype=">u4").tobytes()
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(str(path), "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder, suffix=".gz") -> None:
  """Small valid files: 12 train and 5 test images of 28x28."""
  rng = np.random.default_rng(0)
  for prefix, count in (("train", 12), ("t10k", 5)):
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


def _raw_header(path, header: bytes, data: bytes = b"") -> None:
  with open(path, "wb") as f:
    f.write(header + data)


IDX_DAMAGE = {
  "gzip truncated": (".gz", "images", truncate, "truncated gzip stream"),
  "gzip garbled": (".gz", "images", garble, "corrupt gzip data"),
  "gzip header garbled": (
    ".gz",
    "images",
    lambda p: garble(p, at=0, count=4),
    "corrupt gzip data",
  ),
  "bad magic": (
    "",
    "images",
    lambda p: garble(p, at=0, count=4, byte=b"\x0d"),
    "bad magic number",
  ),
  "raw truncated": ("", "images", truncate, "but its header says"),
  "header cut": (
    "",
    "labels",
    lambda p: _raw_header(p, bytes([0, 0, 8, 3, 0, 0])),
    "shorter than its 3-dimension header",
  ),
  "labels out of range": (
    "",
    "labels",
    lambda p: garble(p, at=8, count=5, byte=b"\xc8"),
    "label 200 is not below 10",
  ),
  "labels of the wrong length": (
    "",
    "labels",
    lambda p: write_idx(p, np.zeros(4, np.uint8)),
    "labels for the 5 images",
  ),
}


@pytest.mark.parametrize("case", IDX_DAMAGE)
def test_damaged_idx_file(tmp_path, case):
  suffix, kind, damage, fragment = IDX_DAMAGE[case]
  write_fashion_mnist(tmp_path, suffix)
  path = tmp_path / f"t10k-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
  path = str(path) + suffix
  damage(path)
  with pytest.raises(DataError) as error:
    idx.load(str(tmp_path), "test", "eval_split")
  assert_names(error, path, fragment, "re-install", "data.dir")


def test_damaged_fashion_mnist_on_the_command_line(tmp_path):
  data_dir = tmp_path / "fm"
  data_dir.mkdir()
  write_fashion_mnist(data_dir)
  damaged = data_dir / "t10k-images-idx3-ubyte.gz"
  truncate(damaged)
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "dblocks_jax.main",
      "--config=configs/vit_fashion_mnist.py:smoke",
      "--config.data.name=fashion_mnist_idx",
      f"--config.data.dir={data_dir}",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  print(last)
  assert last.startswith("error: "), last
  assert f"{damaged} is damaged (truncated gzip stream" in last, last


# Latent shards and meta.json, as --mode=encode writes them.


def write_latents(directory) -> None:
  """A 2-shard train split of [views=2, 2, 2, 4] float16 latents."""
  meta = {
    "format": latents.FORMAT,
    "latent_shape": [2, 2, 4],
    "num_classes": 3,
    "scaling_factor": 0.18215,
    "views": 2,
    "splits": {
      "train": {"complete": True, "num_examples": 5, "shard_sizes": [3, 2]}
    },
  }
  os.makedirs(os.path.join(directory, "train"))
  with open(os.path.join(directory, latents.META), "w") as f:
    json.dump(meta, f, indent=2)
  rng = np.random.default_rng(0)
  for index, size in enumerate((3, 2)):
    for kind in ("mean", "std"):
      array = rng.random((size, 2, 2, 2, 4)).astype(np.float16)
      np.save(latents.shard_path(directory, "train", index, kind), array)
    labels = np.arange(size, dtype=np.int32) % 3
    np.save(latents.shard_path(directory, "train", index, "label"), labels)


def _meta_field(directory, key, value) -> None:
  path = os.path.join(directory, latents.META)
  with open(path) as f:
    meta = json.load(f)
  meta[key] = value
  with open(path, "w") as f:
    json.dump(meta, f)


LATENT_DAMAGE = {
  "meta truncated": ("meta", truncate, "not JSON"),
  "meta garbled": ("meta", garble, "not JSON"),
  "meta field garbled": (
    "meta",
    lambda p: _meta_field(os.path.dirname(p), "latent_shape", "2x2x4"),
    "latent_shape='2x2x4'",
  ),
  "meta sizes garbled": (
    "meta",
    lambda p: _meta_field(os.path.dirname(p), "views", None),
    "views=None",
  ),
  "mean truncated": ("mean", truncate, "but its header needs"),
  "std header garbled": ("std", lambda p: garble(p, at=0), "not a .npy"),
  "label dict garbled": (
    "label",
    lambda p: garble(p, at=12, count=20, byte=b"!"),
    "not a .npy",
  ),
  "label shape": (
    "label",
    lambda p: np.save(p, np.zeros(7, np.int32)),
    "holds int32 [7], but meta.json needs int32 [2]",
  ),
  "mean dtype": (
    "mean",
    lambda p: np.save(p, np.zeros((2, 2, 2, 2, 4), np.float32)),
    "holds float32",
  ),
  "std missing": ("std", os.remove, "is missing"),
}


@pytest.mark.parametrize("case", LATENT_DAMAGE)
def test_damaged_latent_file_is_reported_at_open(tmp_path, case):
  kind, damage, fragment = LATENT_DAMAGE[case]
  directory = str(tmp_path / "latents")
  write_latents(directory)
  if kind == "meta":
    path = os.path.join(directory, latents.META)
  else:
    path = latents.shard_path(directory, "train", 1, kind)
  damage(path)
  with pytest.raises(DataError) as error:
    latents.LatentSource(directory, "train")
  assert_names(error, path, fragment, "--mode=encode")


def test_garbled_latent_labels_are_reported_when_read(tmp_path):
  directory = str(tmp_path / "latents")
  write_latents(directory)
  source = latents.LatentSource(directory, "train")
  assert [source[i]["label"] for i in range(5)] == [0, 1, 2, 0, 1]
  path = latents.shard_path(directory, "train", 0, "label")
  size = os.path.getsize(path)
  garble(path, at=size - 4, count=4, byte=b"\x7f")  # The last label.
  source = latents.LatentSource(directory, "train")  # Header and size fine.
  assert source[1]["label"] == 1
  with pytest.raises(DataError) as error:
    source[2]
  assert_names(error, path, "label 2139062143 at row 2", "--mode=encode")


# Tiny-ImageNet.


def write_tiny_imagenet(folder) -> None:
  """Two classes, two train and one val image each."""
  rng = np.random.default_rng(0)
  wnids = ["n001", "n002"]
  (folder / "val" / "images").mkdir(parents=True)
  (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
  lines = []
  for wnid in wnids:
    images = folder / "train" / wnid / "images"
    images.mkdir(parents=True)
    for i in range(2):
      pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(images / f"{wnid}_{i}.JPEG")
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "val" / "images" / f"{wnid}.JPEG")
    lines.append(f"{wnid}.JPEG\t{wnid}\t0\t0\t63\t63")
  (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


TINY_DAMAGE = {
  "jpeg truncated": (
    "train/n002/images/n002_1.JPEG",
    truncate,
    "image file is truncated",
  ),
  "jpeg header garbled": (
    "val/images/n001.JPEG",
    lambda p: garble(p, at=0, count=16, byte=b"\x00"),
    "cannot identify image file",
  ),
  "wnids garbled": ("wnids.txt", lambda p: garble(p, at=1), "not UTF-8"),
  "wnids truncated": (
    "wnids.txt",
    lambda p: truncate(p, 5),
    "it lists 1 class ids, but",
  ),
  "annotations truncated": (
    "val/val_annotations.txt",
    lambda p: truncate(p, 34),
    "line 2 labels 'n002.JPEG' with ''",
  ),
  "annotations garbled": (
    "val/val_annotations.txt",
    lambda p: garble(p, at=20, count=4),
    "not UTF-8",
  ),
  "annotations cut at a line": (
    "val/val_annotations.txt",
    lambda p: truncate(p, 25),
    "it labels 1 of the 2 images in",
  ),
}


@pytest.mark.parametrize("case", TINY_DAMAGE)
def test_damaged_tiny_imagenet_file(tmp_path, case):
  relative, damage, fragment = TINY_DAMAGE[case]
  folder = tmp_path / "tiny-imagenet-200"
  write_tiny_imagenet(folder)
  path = str(folder / relative)
  damage(path)
  split = "train" if relative.startswith("train") else "val"
  with pytest.raises(DataError) as error:
    source = tiny_imagenet.load(str(folder), split, f"{split}_split")
    for index in range(len(source)):  # Images are decoded per example.
      source[index]
  assert_names(error, path, fragment, "re-download tiny-imagenet-200.zip")


# scikit-learn's digits.csv.gz.


@pytest.fixture
def digits_file(tmp_path, monkeypatch):
  """A copy of digits.csv.gz that the digits reader reads instead."""
  path = str(tmp_path / "digits.csv.gz")
  shutil.copy(digits.data_file(), path)
  monkeypatch.setattr(digits, "data_file", lambda: path)
  digits._load_all.cache_clear()
  digits.load_arrays.cache_clear()
  yield path
  digits._load_all.cache_clear()
  digits.load_arrays.cache_clear()


def _rewrite_csv(path, edit) -> None:
  with gzip.open(path, "rt") as f:
    lines = f.read().splitlines()
  with gzip.open(path, "wt") as f:
    f.write("\n".join(edit(lines)) + "\n")


DIGITS_DAMAGE = {
  "gzip truncated": (truncate, "truncated gzip stream"),
  "gzip garbled": (garble, "corrupt gzip data"),
  "rows missing": (lambda p: _rewrite_csv(p, lambda x: x[:-5]), "(1792, 65)"),
  "text garbled": (
    lambda p: _rewrite_csv(p, lambda x: [*x[:9], "0,0,5,1?", *x[10:]]),
    "not a table of numbers",
  ),
  "label garbled": (
    lambda p: _rewrite_csv(p, lambda x: [*x[:-1], x[-1][:-1] + "42"]),
    "labels 0..9",
  ),
}


@pytest.mark.parametrize("case", DIGITS_DAMAGE)
def test_damaged_digits_file(digits_file, case):
  damage, fragment = DIGITS_DAMAGE[case]
  assert digits.load_arrays("test")[0].shape == (300, 8, 8, 1)  # Intact.
  digits._load_all.cache_clear()
  digits.load_arrays.cache_clear()
  damage(digits_file)
  with pytest.raises(DataError) as error:
    digits.load("train", "train_split")
  assert_names(error, digits_file, fragment, "re-install scikit-learn")


# TFDS datasets prepared as ArrayRecord files.


TFDS_NAME = "dblocks_test_images"  # conftest.prepared_tfds


TFDS_DAMAGE = {
  "records truncated": ("records", truncate, "decodes as empty"),
  "records cut short": (
    "records",
    lambda p: truncate(p, 100),
    "at least 64KB",
  ),
  "records garbled": (
    "records",
    lambda p: garble(p, at=40, count=64),
    "Corrupted Riegeli/records file",
  ),
  "dataset_info.json truncated": ("info", truncate, "Failed to load JSON"),
}


@pytest.mark.parametrize("case", TFDS_DAMAGE)
def test_damaged_tfds_file(prepared_tfds, tmp_path, case):
  kind, damage, fragment = TFDS_DAMAGE[case]
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(prepared_tfds, data_dir)
  version = os.path.join(data_dir, TFDS_NAME, "1.0.0")
  if kind == "info":
    path = os.path.join(version, "dataset_info.json")
  else:
    path = os.path.join(
      version, f"{TFDS_NAME}-train.array_record-00000-of-00001"
    )
  damage(path)
  with pytest.raises(DataError) as error:
    source = tfds_sources.load(TFDS_NAME, "train", data_dir, "train_split")
    for index in range(len(source)):
      source[index]
  assert_names(error, path, fragment, f"tfds build {TFDS_NAME}")


def test_data_error_is_a_config_error():
  assert issubclass(DataError, ConfigError)
