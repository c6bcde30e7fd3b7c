"""Tests for dblocks_jax.data: sources, augmentation and grain pipelines."""

import gzip
import itertools
import os

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image, ImageOps
from sklearn import datasets as sklearn_datasets

from dblocks_jax import data
from dblocks_jax.data import (
  digits,
  image_utils,
  pipeline,
  randaugment,
  synthetic,
  tfds_sources,
  transforms,
)
from dblocks_jax.errors import DataError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def make_config(**overrides) -> data.DataOptions:
  """Returns data options with every field, augmentation off."""
  fields = dict(
    name="digits",
    dir="",
    train_split="train",
    eval_split="test",
    crop_padding=0,
    flip=False,
    random_resized_crop=False,
    randaugment=False,
    randaugment_num_ops=2,
    randaugment_magnitude=9,
    num_workers=0,
    synthetic_num_classes=10,
    synthetic_image_shape=(8, 8, 3),
    synthetic_num_train=256,
    synthetic_num_eval=200,
  )
  fields.update(overrides)
  return data.DataOptions.from_mapping(fields)


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return list(itertools.islice(iterator, count))


def assert_batches_equal(got, want) -> None:
  assert len(got) == len(want)
  for g, w in zip(got, want, strict=True):
    assert g.keys() == w.keys()
    for key in g:
      np.testing.assert_array_equal(g[key], w[key])


# Names and errors.


def test_every_supported_name_reaches_its_loader(tmp_path):
  """Each name of DATASETS is described, or (its files absent from an
  empty data dir) refused in one line that names the fix: no supported
  name falls through to the unknown-name error or to a stray exception."""
  described = set()
  for name in data.DATASETS:
    config = make_config(name=name, dir=str(tmp_path))
    try:
      info = data.dataset_info(config)
    except DataError as error:
      message = str(error)
      assert "not a known dataset" not in message, name
      assert "\n" not in message, message
      assert name in message or "data.dir" in message, message
      continue
    assert info.name == name and info.num_classes >= 2, name
    assert len(info.image_shape) == 3 and info.num_train > 0, name
    described.add(name)
  assert {"digits", "synthetic"} <= described  # Bundled, always there.


def test_unknown_name_is_one_line_listing_the_choices():
  config = make_config(name="foo")
  calls = [
    lambda: data.dataset_info(config),
    lambda: data.make_train_iterator(config, batch_size=4, seed=0),
    lambda: data.make_eval_batches(config, batch_size=4),
  ]
  for call in calls:
    with pytest.raises(DataError) as error:
      call()
    message = str(error.value)
    assert "data.name='foo' is not a known dataset" in message
    assert "cifar10, cifar100" in message and "synthetic" in message
    assert "\n" not in message


def test_unknown_split_names_the_field_and_the_choices():
  with pytest.raises(DataError, match=r"data\.eval_split='validation'.*train"):
    data.make_eval_batches(make_config(eval_split="validation"), batch_size=4)
  with pytest.raises(DataError, match=r"data\.train_split"):
    data.dataset_info(make_config(train_split="bogus"))


# Digits.


def test_digits_info():
  info = data.dataset_info(make_config())
  assert info.name == "digits"
  assert info.num_classes == 10
  assert info.image_shape == (8, 8, 1)
  assert (info.num_train, info.num_eval) == (1497, 300)
  assert len(info.mean) == len(info.std) == 1


def test_digits_normalisation_constants_match_the_train_split():
  images, _ = digits.load_arrays("train")
  pixels = images.astype(np.float64) / 255.0
  info = data.dataset_info(make_config())
  np.testing.assert_allclose(info.mean, [pixels.mean()], atol=1e-3)
  np.testing.assert_allclose(info.std, [pixels.std()], atol=1e-3)


def test_digits_split_is_a_fixed_partition():
  train_images, train_labels = digits.load_arrays("train")
  test_images, test_labels = digits.load_arrays("test")
  assert train_images.shape == (1497, 8, 8, 1)
  assert test_images.shape == (300, 8, 8, 1)
  assert train_images.dtype == np.uint8 and train_images.max() == 255
  assert set(np.unique(train_labels)) == set(range(10))

  # Together the splits hold every example of scikit-learn's set once.
  everything = sklearn_datasets.load_digits()
  pixels = np.round(everything.images * 255 / 16).astype(np.uint8)
  np.testing.assert_array_equal(
    examples(pixels[..., None], everything.target),
    examples(
      np.concatenate([train_images, test_images]),
      np.concatenate([train_labels, test_labels]),
    ),
  )


def examples(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
  """Returns each (image, label) pair as bytes, sorted."""
  return sorted(
    image.tobytes() + int(label).to_bytes(4, "little")
    for image, label in zip(images, labels, strict=True)
  )


def test_digits_train_batches_are_normalised():
  config = make_config()
  iterator = data.make_train_iterator(config, batch_size=1024, seed=3)
  batch = next(iterator)
  assert batch["image"].shape == (1024, 8, 8, 1)
  assert batch["image"].dtype == np.float32
  assert batch["label"].shape == (1024,)
  assert batch["label"].dtype == np.int32
  assert batch["label"].min() >= 0 and batch["label"].max() < 10
  assert abs(float(batch["image"].mean())) < 0.05
  assert abs(float(batch["image"].std()) - 1.0) < 0.05


def test_train_iterator_is_seeded_and_reshuffles_each_epoch():
  config = make_config()
  first = take(data.make_train_iterator(config, batch_size=64, seed=0), 2)
  again = take(data.make_train_iterator(config, batch_size=64, seed=0), 2)
  other = take(data.make_train_iterator(config, batch_size=64, seed=1), 1)
  assert_batches_equal(again, first)
  assert not np.array_equal(other[0]["image"], first[0]["image"])

  # With one epoch per batch, each batch is the whole split, reordered.
  epochs = take(data.make_train_iterator(config, batch_size=1497, seed=0), 2)
  whole = next(
    data.make_eval_batches(make_config(eval_split="train"), batch_size=1497)
  )
  want = examples(whole["image"], whole["label"])
  for epoch in epochs:
    assert examples(epoch["image"], epoch["label"]) == want
  assert not np.array_equal(epochs[0]["label"], epochs[1]["label"])


# Resuming.


def augmented_digits():
  return make_config(crop_padding=2, flip=True, randaugment=True)


def test_set_state_resumes_exactly():
  config = augmented_digits()
  iterator = data.make_train_iterator(config, batch_size=32, seed=5)
  take(iterator, 3)
  state = iterator.get_state()
  expected = take(iterator, 4)

  fresh = data.make_train_iterator(config, batch_size=32, seed=5)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 4), expected)


def test_orbax_round_trip_resumes_exactly(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  config = augmented_digits()
  iterator = data.make_train_iterator(config, batch_size=16, seed=2)
  take(iterator, 2)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(
    7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator))
  )
  manager.wait_until_finished()
  expected = next(iterator)

  fresh = data.make_train_iterator(config, batch_size=16, seed=2)
  manager.restore(
    7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
  )
  manager.close()
  assert_batches_equal([next(fresh)], [expected])


def test_process_slices_are_disjoint_and_cover_the_split(monkeypatch):
  config = make_config(name="synthetic", synthetic_num_train=64)
  seen = []
  for index in range(2):
    monkeypatch.setattr(pipeline.jax, "process_index", lambda i=index: i)
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    batch = next(data.make_train_iterator(config, batch_size=32, seed=0))
    seen.extend(image.tobytes() for image in batch["image"])
  monkeypatch.undo()
  everything = next(
    data.make_eval_batches(
      make_config(name="synthetic", synthetic_num_train=64, eval_split="train"),
      batch_size=64,
    )
  )
  assert sorted(seen) == sorted(i.tobytes() for i in everything["image"])


# Eval batches.


def test_eval_batches_cover_each_example_once_with_zero_padding():
  config = make_config()
  batches = list(data.make_eval_batches(config, batch_size=128))
  assert len(batches) == 3  # 300 = 128 + 128 + 44
  for batch in batches:
    assert batch["image"].shape == (128, 8, 8, 1)
    assert batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert batch["mask"].dtype == bool
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 300
  assert mask[:300].all() and not mask[300:].any()
  last = batches[-1]
  assert not last["image"][44:].any() and not last["label"][44:].any()

  # In order, unaugmented: the images are the test split, normalised.
  images, labels = digits.load_arrays("test")
  info = data.dataset_info(config)
  got = np.concatenate([b["image"] for b in batches])[:300]
  want = (images / 255.0 - info.mean[0]) / info.std[0]
  np.testing.assert_allclose(got, want, atol=1e-5)
  got_labels = np.concatenate([b["label"] for b in batches])[:300]
  np.testing.assert_array_equal(got_labels, labels)


def test_eval_batch_size_dividing_the_split_needs_no_padding():
  batches = list(data.make_eval_batches(make_config(), batch_size=100))
  assert len(batches) == 3
  assert all(b["mask"].all() for b in batches)


# Synthetic.


def test_synthetic_is_deterministic_and_learnable():
  config = make_config(name="synthetic", synthetic_image_shape=(8, 8, 3))
  info = data.dataset_info(config)
  assert info.image_shape == (8, 8, 3)
  assert (info.num_train, info.num_eval) == (256, 200)
  assert info.mean == (0.5,) * 3 and info.std == (0.25,) * 3

  batches = list(data.make_eval_batches(config, batch_size=64))
  assert_batches_equal(
    batches, list(data.make_eval_batches(config, batch_size=64))
  )
  mask = np.concatenate([b["mask"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])[mask]
  labels = np.concatenate([b["label"] for b in batches])[mask]
  assert len(np.unique(labels)) == 10

  protos = synthetic.prototypes(10, (8, 8, 3)) / 255.0
  protos = (protos - 0.5) / 0.25
  distances = ((images[:, None] - protos[None]) ** 2).sum(axis=(2, 3, 4))
  accuracy = np.mean(distances.argmin(axis=1) == labels)
  assert accuracy > 0.9


def test_synthetic_train_and_eval_differ():
  config = make_config(name="synthetic")
  train = next(
    data.make_eval_batches(
      make_config(name="synthetic", eval_split="train"), batch_size=8
    )
  )
  test = next(data.make_eval_batches(config, batch_size=8))
  assert not np.array_equal(train["image"], test["image"])
  # `val` names the same held-out set as `test`.
  val = next(
    data.make_eval_batches(
      make_config(name="synthetic", eval_split="val"), batch_size=8
    )
  )
  assert_batches_equal([val], [test])


# Fashion-MNIST from IDX files.


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes an IDX file of unsigned bytes, gzip-compressed for `.gz`."""
  header = bytes([0, 0, 0x08, array.ndim])
  header += np.asarray(array.shape, dtype=">u4").tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder, compress: bool, rng) -> dict[str, tuple]:
  suffix = ".gz" if compress else ""
  written = {}
  for split, prefix, count in (("train", "train", 12), ("test", "t10k", 5)):
    images = rng.integers(0, 256, (count, 6, 5), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    write_idx(str(folder / f"{prefix}-images-idx3-ubyte{suffix}"), images)
    write_idx(str(folder / f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
    written[split] = images, labels
  return written


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_reads_written_files(tmp_path, compress):
  written = write_fashion_mnist(tmp_path, compress, np.random.default_rng(0))
  config = make_config(name="fashion_mnist_idx", dir=str(tmp_path))
  info = data.dataset_info(config)
  assert info.image_shape == (6, 5, 1)
  assert (info.num_train, info.num_eval) == (12, 5)
  assert info.num_classes == 10
  assert info.mean == (0.2860,) and info.std == (0.3530,)

  batch = next(data.make_eval_batches(config, batch_size=8))
  images, labels = written["test"]
  pixels = (batch["image"][:5, ..., 0] * 0.3530 + 0.2860) * 255.0
  np.testing.assert_allclose(pixels, images, atol=1e-3)
  np.testing.assert_array_equal(batch["label"][:5], labels)
  assert batch["mask"].tolist() == [True] * 5 + [False] * 3

  train = next(data.make_train_iterator(config, batch_size=4, seed=0))
  assert train["image"].shape == (4, 6, 5, 1)


def test_fashion_mnist_idx_missing_folder_says_how_to_install(tmp_path):
  missing = tmp_path / "nowhere"
  config = make_config(name="fashion_mnist_idx", dir=str(missing))
  for call in (
    lambda: data.dataset_info(config),
    lambda: data.make_train_iterator(config, batch_size=4, seed=0),
  ):
    with pytest.raises(DataError) as error:
      call()
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(missing) in message and "data.dir" in message


def test_fashion_mnist_idx_rejects_a_bad_magic_number(tmp_path):
  write_fashion_mnist(tmp_path, True, np.random.default_rng(0))
  with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
    f.write(b"\x00\x00\x0d\x03" + bytes(20))
  config = make_config(name="fashion_mnist_idx", dir=str(tmp_path))
  with pytest.raises(DataError, match="not an IDX file"):
    data.make_eval_batches(config, batch_size=4)


@pytest.mark.skipif(
  not os.path.isdir(DEBIAN_FASHION_MNIST),
  reason="dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_idx_debian_files():
  info = data.dataset_info(make_config(name="fashion_mnist_idx"))
  assert info.image_shape == (28, 28, 1)
  assert (info.num_train, info.num_eval) == (60000, 10000)


# TFDS.


@pytest.mark.parametrize(
  ("name", "shape"),
  [("cifar10", (32, 32, 3)), ("fashion_mnist", (28, 28, 1))],
)
def test_tfds_pipeline_on_mock_data(name, shape):
  config = make_config(name=name, crop_padding=4, flip=True, randaugment=True)
  with tfds.testing.mock_data(
    num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    info = data.dataset_info(config)
    train = take(data.make_train_iterator(config, batch_size=8, seed=0), 3)
    evals = list(data.make_eval_batches(config, batch_size=8))
  assert info.image_shape == shape and info.num_classes == 10
  assert (info.num_train, info.num_eval) == (20, 20)
  for batch in train:
    assert batch["image"].shape == (8, *shape)
    assert batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert set(batch) == {"image", "label"}
  assert [int(b["mask"].sum()) for b in evals] == [8, 8, 4]
  assert evals[0]["image"].shape == (8, *shape)


def test_tfds_missing_dataset_gives_the_build_command(tmp_path):
  config = make_config(name="cifar100", dir=str(tmp_path))
  command = (
    f"tfds build cifar100 --file_format=array_record --data_dir={tmp_path}"
  )
  for call in (
    lambda: data.dataset_info(config),
    lambda: data.make_train_iterator(config, batch_size=4, seed=0),
    lambda: data.make_eval_batches(config, batch_size=4),
  ):
    with pytest.raises(DataError) as error:
      call()
    message = str(error.value)
    assert command in message
    assert "pip install tensorflow-cpu" in message
    assert "\n" not in message


def test_tfds_prepared_dataset_is_described_from_metadata(prepared_tfds):
  name = "dblocks_test_images"
  found = tfds_sources.describe(
    name,
    [("train", "train_split"), ("test[:50%]", "eval_split")],
    prepared_tfds,
  )
  assert found == ((4, 4, 3), 3, (6, 1))
  source = tfds_sources.load(name, "train", prepared_tfds, "train_split")
  assert len(source) == 6
  example = source[4]
  assert example["image"].shape == (4, 4, 3)
  assert example["image"].dtype == np.uint8
  assert int(example["label"]) == 1


def test_tfds_prepared_dataset_rejects_unknown_splits(prepared_tfds):
  name = "dblocks_test_images"
  expected = (
    r"data\.eval_split='validation' is not a split of dblocks_test_images; "
    "choose one of: test, train"
  )
  with pytest.raises(DataError, match=expected):
    tfds_sources.load(name, "validation", prepared_tfds, "eval_split")
  with pytest.raises(DataError, match=expected):
    tfds_sources.describe(
      name,
      [("train", "train_split"), ("validation", "eval_split")],
      prepared_tfds,
    )


# Tiny-ImageNet layout.


def write_tiny_imagenet(folder, rng) -> None:
  wnids = ["n001", "n002"]
  folder.mkdir()
  (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
  for wnid in wnids:
    images = folder / "train" / wnid / "images"
    images.mkdir(parents=True)
    for i in range(3):
      pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(images / f"{wnid}_{i}.JPEG")
  val = folder / "val" / "images"
  val.mkdir(parents=True)
  lines = []
  for i, wnid in enumerate(["n002", "n001", "n002"]):
    # One greyscale image, as the real set has a few.
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(
      val / f"val_{i}.JPEG"
    )
    lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
  (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tiny_imagenet_folder(tmp_path):
  folder = tmp_path / "tiny-imagenet-200"
  write_tiny_imagenet(folder, np.random.default_rng(0))
  config = make_config(
    name="tiny_imagenet",
    dir=str(folder),
    eval_split="val",
    random_resized_crop=True,
    flip=True,
    randaugment=True,
  )
  info = data.dataset_info(config)
  assert info.image_shape == (64, 64, 3) and info.num_classes == 2
  assert (info.num_train, info.num_eval) == (6, 3)
  batch = next(data.make_train_iterator(config, batch_size=4, seed=0))
  assert batch["image"].shape == (4, 64, 64, 3)
  evals = list(data.make_eval_batches(config, batch_size=2))
  labels = np.concatenate([b["label"] for b in evals])
  np.testing.assert_array_equal(labels, [1, 0, 1, 0])
  assert evals[0]["image"].shape == (2, 64, 64, 3)


def test_tiny_imagenet_missing_folder_describes_the_layout(tmp_path):
  config = make_config(
    name="tiny_imagenet", dir=str(tmp_path / "absent"), eval_split="val"
  )
  with pytest.raises(DataError) as error:
    data.dataset_info(config)
  message = str(error.value)
  assert str(tmp_path) in message
  assert "tiny-imagenet-200.zip" in message and "data.dir" in message
  assert "wnids.txt" in message and "val_annotations.txt" in message
  with pytest.raises(DataError, match="data.dir is empty"):
    data.make_eval_batches(
      make_config(name="tiny_imagenet", eval_split="val"), batch_size=2
    )


# Augmentation invariants.


def test_pad_and_crop_only_shifts_content():
  images = np.zeros((200, 8, 8, 3), np.uint8)
  images[:, 3, 4] = 255
  out = transforms.pad_and_crop(images, 2, np.random.default_rng(0))
  assert out.shape == images.shape and out.dtype == np.uint8
  shifts = set()
  for image in out:
    bright = np.argwhere(image.max(axis=-1) > 0)
    assert len(bright) == 1  # Padding 2 never moves (3, 4) out of 8x8.
    (row, col) = bright[0]
    assert abs(row - 3) <= 2 and abs(col - 4) <= 2
    np.testing.assert_array_equal(image[row, col], [255, 255, 255])
    shifts.add((row, col))
  assert len(shifts) == 25  # Every offset, drawn per image.

  # Any crop equals its image shifted by at most the padding.
  textured = np.random.default_rng(1).integers(1, 256, (4, 8, 8, 1), np.uint8)
  out = transforms.pad_and_crop(textured, 3, np.random.default_rng(2))
  for image, crop in zip(textured, out, strict=True):
    padded = np.pad(image, ((3, 3), (3, 3), (0, 0)))
    assert any(
      np.array_equal(crop, padded[top : top + 8, left : left + 8])
      for top in range(7)
      for left in range(7)
    )
  assert transforms.pad_and_crop(textured, 0, None) is textured


def test_flip_mirrors_about_half_of_a_batch_exactly():
  images = np.random.default_rng(0).integers(0, 256, (400, 5, 7, 3), np.uint8)
  out = transforms.random_flip(images, np.random.default_rng(1))
  flipped = [
    np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images, strict=True)
  ]
  kept = [np.array_equal(o, i) for o, i in zip(out, images, strict=True)]
  assert all(f != k for f, k in zip(flipped, kept, strict=True))
  assert 150 < sum(flipped) < 250


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1), (20, 36, 3)])
def test_random_resized_crop_keeps_shape(shape):
  image = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
  rng = np.random.default_rng(1)
  for _ in range(20):
    out = transforms.random_resized_crop(image, rng)
    assert out.shape == shape and out.dtype == np.uint8


def test_random_resized_crop_falls_back_to_the_centre():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
  # No area above the image's own can fit: the square image is kept whole.
  out = transforms.random_resized_crop(
    image, np.random.default_rng(0), scale=(2.0, 3.0)
  )
  np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_randaugment_keeps_shape_and_is_deterministic(shape):
  image = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
  outputs = []
  for seed in range(30):
    out = randaugment.rand_augment(image, np.random.default_rng(seed))
    again = randaugment.rand_augment(image, np.random.default_rng(seed))
    assert out.shape == shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, again)
    outputs.append(out)
  assert sum(not np.array_equal(o, image) for o in outputs) > 20


@pytest.mark.parametrize("name", randaugment.OP_NAMES)
@pytest.mark.parametrize("shape", [(16, 16, 3), (16, 16, 1)])
def test_each_randaugment_op_keeps_shape(name, shape):
  image = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
  amount = randaugment.strength(name, 30, 31, *shape[:2])
  signs = (1, -1) if name in randaugment.SIGNED_OPS else (1,)
  for sign in signs:
    out = randaugment.apply_op(image, name, sign * amount)
    assert out.shape == shape and out.dtype == np.uint8


def test_randaugment_strengths_follow_torchvision():
  assert randaugment.strength("Posterize", 9, 31, 32, 32) == 7
  assert randaugment.strength("Posterize", 30, 31, 32, 32) == 4
  assert randaugment.strength("Solarize", 9, 31, 32, 32) == pytest.approx(178.5)
  assert randaugment.strength("Rotate", 30, 31, 32, 32) == pytest.approx(30)
  assert randaugment.strength("ShearX", 15, 31, 32, 32) == pytest.approx(0.15)
  translate = randaugment.strength("TranslateX", 30, 31, 32, 64)
  assert translate == pytest.approx(150 / 331 * 64)
  assert randaugment.strength("Identity", 9, 31, 32, 32) == 0.0

  image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)
  # Solarize at the top bin (threshold 0) inverts every pixel.
  np.testing.assert_array_equal(
    randaugment.apply_op(image, "Solarize", 0.0), 255 - image
  )
  # Posterize to 4 bits clears the low 4 bits.
  posterized = randaugment.apply_op(image, "Posterize", 4.0)
  np.testing.assert_array_equal(posterized, image & 0xF0)
  # Translating by 2 pixels shifts content and fills with black.
  shifted = randaugment.apply_op(image, "TranslateX", 2.0)
  np.testing.assert_array_equal(shifted[:, 2:], image[:, :-2])
  assert not shifted[:, :2].any()


@pytest.mark.parametrize("shape", [(16, 16, 3), (9, 7, 1)])
def test_randaugment_point_ops_match_pil(shape):
  rng = np.random.default_rng(0)
  images = [
    rng.integers(0, 256, shape, dtype=np.uint8),
    rng.integers(40, 90, shape, dtype=np.uint8),
    (rng.random(shape) < 0.3).astype(np.uint8) * 200,
    np.full(shape, 7, np.uint8),
  ]
  for image in images:
    pil = image_utils.to_pil(image)
    for name, reference in (
      ("AutoContrast", ImageOps.autocontrast),
      ("Equalize", ImageOps.equalize),
    ):
      np.testing.assert_array_equal(
        randaugment.apply_op(image, name, 0.0),
        image_utils.from_pil(reference(pil)),
      )
    for bits in range(1, 9):
      np.testing.assert_array_equal(
        randaugment.apply_op(image, "Posterize", bits),
        image_utils.from_pil(ImageOps.posterize(pil, bits)),
      )
    for threshold in (0.0, 100.5, 178.5, 255.0):
      np.testing.assert_array_equal(
        randaugment.apply_op(image, "Solarize", threshold),
        image_utils.from_pil(ImageOps.solarize(pil, threshold)),
      )


def test_train_iterator_with_worker_processes_matches_in_process():
  config = augmented_digits()
  in_process = take(data.make_train_iterator(config, batch_size=16, seed=4), 3)
  config = config.replace(num_workers=1)
  iterator = data.make_train_iterator(config, batch_size=16, seed=4)
  try:
    assert_batches_equal(take(iterator, 3), in_process)
  finally:
    iterator.close()


# Slices of a split (validation splits held out of train).


def test_a_split_slice_holds_out_part_of_the_training_images():
  head = data.dataset_info(make_config(train_split="train[:90%]"))
  tail = data.dataset_info(make_config(train_split="train[90%:]"))
  assert (head.num_train, tail.num_train) == (1347, 150)
  images, labels = digits.load_arrays("train")
  batches = data.make_eval_batches(
    make_config(eval_split="train[-150:]"), batch_size=150
  )
  held_out = next(batches)
  np.testing.assert_array_equal(held_out["label"], labels[-150:])
  train_part = data.make_eval_batches(
    make_config(eval_split="train[:1347]"), batch_size=1347
  )
  np.testing.assert_array_equal(next(train_part)["label"], labels[:1347])


@pytest.mark.parametrize(
  ("split", "message"),
  [("train[:ninety%]", "integers or percentages"), ("train[5:5]", "no ex")],
)
def test_a_bad_split_slice_names_the_field(split, message):
  with pytest.raises(DataError, match=rf"data\.train_split=.*{message}"):
    data.dataset_info(make_config(train_split=split))


def test_a_slice_of_a_file_source_offsets_its_indices():
  from dblocks_jax.data import arrays

  source = [{"label": i} for i in range(10)]
  sliced = arrays.slice_source(source, "train[3:-2]", "train_split")
  assert len(sliced) == 5
  assert [sliced[i]["label"] for i in range(5)] == [3, 4, 5, 6, 7]
  assert sliced[-1]["label"] == 7
  with pytest.raises(IndexError):
    sliced[5]
  assert arrays.parse_split("validation") == ("validation", None, None)
  assert arrays.parse_split("train[10%:]") == ("train", "10%", None)


# Epochs read a batch at a time.


def test_epoch_batches_visit_each_example_once_per_epoch():
  from dblocks_jax.data import arrays, epochs

  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  source = arrays.ArraySource(images, np.arange(10) % 3)
  stream = epochs.EpochBatches(
    source, batch_size=4, seed=3, keys=("image", "label")
  )
  seen = np.concatenate([stream[i]["image"].ravel() for i in range(5)])
  # 20 positions = 2 epochs; batch 2 spans both.
  assert sorted(seen[:10]) == list(range(10))
  assert sorted(seen[10:]) == list(range(10))
  assert not np.array_equal(seen[:10], seen[10:])  # Reshuffled.
  np.testing.assert_array_equal(
    stream[2]["label"], stream[2]["image"].ravel() % 3
  )
  # A pure function of the index, whatever was read before.
  again = epochs.EpochBatches(
    source, batch_size=4, seed=3, keys=("image", "label")
  )
  np.testing.assert_array_equal(again[3]["image"], stream[3]["image"])


def test_epoch_batches_of_any_source_stack_its_examples():
  import pickle

  from dblocks_jax.data import arrays, epochs

  images = np.random.default_rng(0).integers(0, 256, (12, 2, 2, 1), np.uint8)
  labels = np.arange(12)
  indices = np.arange(1, 12, 2)  # One process of two.
  fast = epochs.EpochBatches(
    arrays.ArraySource(images, labels),
    batch_size=3,
    seed=0,
    keys=("image", "label"),
    indices=indices,
  )
  as_list = [
    {"image": image, "label": int(label), "id": f"x{label}"}
    for image, label in zip(images, labels, strict=True)
  ]
  slow = epochs.EpochBatches(
    as_list, batch_size=3, seed=0, keys=("image", "label"), indices=indices
  )
  restored = pickle.loads(pickle.dumps(slow))  # Worker processes.
  for i in range(4):
    assert set(slow[i]) == {"image", "label"}  # "id" dropped.
    for other in (slow, restored):
      np.testing.assert_array_equal(other[i]["image"], fast[i]["image"])
      np.testing.assert_array_equal(other[i]["label"], fast[i]["label"])
    assert set(fast[i]["label"]) <= set(indices)


def test_epoch_batches_read_out_of_order_from_threads():
  import concurrent.futures

  from dblocks_jax.data import arrays, epochs

  images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
  source = arrays.ArraySource(images, np.zeros(20, np.int64))

  def stream():
    return epochs.EpochBatches(source, batch_size=8, seed=1, keys=("image",))

  expected = [stream()[i]["image"] for i in range(40)]
  shared = stream()
  order = np.random.default_rng(0).permutation(40)  # Epochs 0..15, mixed.
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    images_read = pool.map(lambda i: shared[int(i)]["image"], order)
    got = dict(zip(order, images_read, strict=True))
  for i in range(40):
    np.testing.assert_array_equal(got[i], expected[i])
