"""The FID Inception-v3, its torch-free weight reader, and its features.

Goldens (tests/fixtures/inception_golden.npz) come from pytorch-fid's torch
model with seeded random weights (tools/inception_goldens.py); the tests
regenerate the same weights in numpy (inception_random.py), load them
through the real loader and compare. Pool features agree to 3e-7 of their
largest value (max |diff| 2.3e-5 on features up to 80); the test allows
1e-5 of it, room for other CPUs' float32 summation orders.
"""

import hashlib
import os
import pickle
import shutil
import zipfile

import inception_random
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs
from flax import nnx

from configs import dit_cifar10, dit_fashion_mnist, dit_imagenet
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.evaluate import features, pixels
from dblocks_jax.families import evaluation
from dblocks_jax.models.pretrained import (
  inception,
  inception_weights,
  torch_files,
)

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")


def save_file(tensors, path):
  """safetensors' writer; without the [weights] extra, the test skips."""
  needs("safetensors.numpy", "weights").save_file(tensors, path)


GOLDEN_TOLERANCE = 1e-5  # Of the largest golden feature.


@pytest.fixture(scope="module")
def golden():
  with np.load(os.path.join(DATA, "inception_golden.npz")) as g:
    return dict(g)


@pytest.fixture(scope="module")
def torch_shapes() -> dict[str, tuple[int, ...]]:
  """{torchvision name: PyTorch shape} of every tensor of the JAX model."""
  model = nnx.eval_shape(lambda: inception.InceptionV3(rngs=nnx.Rngs(0)))
  return {
    inception_weights.torch_name(k): inception_weights.torch_shape(k, v.shape)
    for k, v in nnx.to_flat_state(nnx.state(model))
  }


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, torch_shapes):
  """The seeded random weights of the goldens, as a .npz state dict."""
  path = str(tmp_path_factory.mktemp("inception") / "random.npz")
  np.savez(path, **inception_random.random_state_dict(torch_shapes))
  return path


@pytest.fixture(scope="module")
def network(weights_file):
  return features.InceptionFeatures(weights_file)


def test_names_and_shapes_follow_the_torchvision_state_dict(
  golden, torch_shapes
):
  names = sorted(torch_shapes)
  assert names == list(golden["param_names"])
  shapes = [",".join(map(str, torch_shapes[k])) for k in names]
  assert shapes == list(golden["param_shapes"])
  assert inception_weights.torch_name(
    ("Mixed_7c", "branch3x3dbl_3b", "bn", "var")
  ) == ("Mixed_7c.branch3x3dbl_3b.bn.running_var")


@pytest.mark.parametrize("sizes", inception_random.MATRIX_RESIZES)
def test_resize_matrices_match_torch(golden, sizes):
  """Upsampling (32, 28 -> 299) and downsampling without antialiasing."""
  n_in, n_out = sizes
  expected = golden[f"matrix_{n_in}_{n_out}"]
  np.testing.assert_allclose(
    inception.resize_matrix(n_in, n_out), expected, rtol=0, atol=2e-6
  )


def test_bilinear_resize_matches_torch(golden):
  images = inception_random.resize_inputs()
  for i, ((_, size), x) in enumerate(
    zip(inception_random.IMAGE_RESIZES, images, strict=True)
  ):
    nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    out = np.asarray(inception.resize_bilinear(nhwc, *size))
    np.testing.assert_allclose(
      out.transpose(0, 3, 1, 2), golden[f"resized_{i}"], rtol=0, atol=2e-6
    )


def test_pool_features_match_pytorch_fid(network, golden):
  """Loaded from a .npz, through `InceptionFeatures`: RGB 32x32 (a batch of
  two) and grey 28x28 (one, padded to the first batch size)."""
  inputs = inception_random.golden_inputs()
  rgb = np.concatenate([inputs["rgb32"], 1 - inputs["rgb32"]])
  out = {"rgb32": network(rgb)[:1], "grey28": network(inputs["grey28"])}
  for name, value in out.items():
    expected = golden[f"features_{name}"]
    assert value.shape == expected.shape == (1, inception.FEATURE_DIM)
    error = np.abs(value - expected).max()
    assert error <= GOLDEN_TOLERANCE * np.abs(expected).max(), (name, error)


def test_description_and_shapes(network, weights_file):
  with open(weights_file, "rb") as f:
    sha256 = hashlib.sha256(f.read()).hexdigest()
  assert network.description == {
    "feature_network": "inception",
    "inception_weights": "random.npz",
    "inception_sha256": sha256,
  }
  for shape in [(28, 28, 1), (32, 32, 3), (300, 17, 3)]:
    network.check_shape(shape)
  with pytest.raises(ConfigError, match=r"\[32, 32, 4\]"):
    network.check_shape((32, 32, 4))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reads_torch_save_formats(fmt):
  """Views of one storage (strided, offset), float16, int64, a Parameter."""
  path = os.path.join(DATA, f"tiny_state_dict_{fmt}.pth")
  loaded = torch_files.load_state_dict(path)
  expected = inception_random.tiny_state_dict()
  assert list(loaded) == list(expected)
  for name, value in expected.items():
    assert loaded[name].dtype == value.dtype, name
    np.testing.assert_array_equal(loaded[name], value)
  assert inception_weights.read_weights(path).keys() == expected.keys()


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [False, True])
def test_refuses_pickles_with_other_globals(tmp_path, zipped):
  marker = tmp_path / "executed"
  payload = pickle.dumps({"x": _Exploit(marker)}, protocol=2)
  path = tmp_path / "evil.pth"
  if zipped:
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("evil/data.pkl", payload)
  else:
    path.write_bytes(payload)
  with pytest.raises(DataError, match="system, which weight files never need"):
    inception_weights.read_weights(str(path))
  assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_files_are_data_errors(tmp_path, fmt):
  with open(os.path.join(DATA, f"tiny_state_dict_{fmt}.pth"), "rb") as f:
    data = f.read()
  path = tmp_path / "cut.pth"
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match="not a readable state dict"):
    inception_weights.read_weights(str(path))


def test_missing_file_names_the_download_and_the_flag(tmp_path):
  with pytest.raises(ConfigError) as info:
    inception_weights.load_inception(str(tmp_path / "none.pth"))
  assert inception_weights.FID_WEIGHTS_URL in str(info.value)
  assert "--config.eval.inception_weights=PATH" in str(info.value)


def test_wrong_shape_names_the_key(tmp_path):
  name = "Mixed_6b.branch7x7_2.conv.weight"
  path = str(tmp_path / "bad.safetensors")
  save_file({name: np.zeros((128, 128, 7, 1), np.float32)}, path)
  with pytest.raises(DataError) as info:
    inception_weights.load_inception(path)
  message = str(info.value)
  assert name in message and "[128, 128, 7, 1]" in message
  assert "[128, 128, 1, 7]" in message


def test_missing_tensors_are_counted(tmp_path):
  path = str(tmp_path / "fc_only.npz")
  np.savez(path, **{"fc.weight": np.zeros((1008, 2048), np.float32)})
  with pytest.raises(DataError, match="lacks 470 tensors"):
    inception_weights.load_inception(path)


def test_damaged_official_file_is_refused(tmp_path):
  """The official file name carries its sha256 prefix (6726825d)."""
  path = tmp_path / inception_weights.FID_WEIGHTS_FILE
  shutil.copy(os.path.join(DATA, "tiny_state_dict_zip.pth"), path)
  with pytest.raises(DataError, match="damaged download"):
    inception_weights.load_inception(str(path))


def test_config_defaults_and_the_weights_flag(tmp_path, network):
  config = dit_cifar10.get_config()
  assert config.eval.feature_network == "inception"
  assert config.eval.inception_weights == ""
  assert dit_cifar10.get_config("smoke").eval.feature_network == "none"
  imagenet = dit_imagenet.get_config()
  assert imagenet.eval.feature_network == "inception"
  assert imagenet.eval.reference_split == "validation"
  # Inception takes the decoded 256x256 RGB pixels, not the 32x32x4 latents.
  assert evaluation.pixel_shape(imagenet) == (256, 256, 3)
  assert pixels.pixel_shape((32, 32, 4), downsample_factor=8) == (256, 256, 3)
  assert pixels.pixel_shape((28, 28, 1)) == (28, 28, 1)
  network.check_shape(evaluation.pixel_shape(imagenet))
  assert dit_imagenet.get_config("smoke").eval.feature_network == "none"
  assert dit_fashion_mnist.get_config().eval.feature_network == "classifier"
  with pytest.raises(ConfigError, match="--config.eval.inception_weights="):
    evaluation.feature_network(config)
  with config.unlocked():
    config.eval.inception_weights = str(tmp_path / "missing.pth")
  with pytest.raises(ConfigError, match="releases/download/fid_weights"):
    evaluation.feature_network(config)


def test_making_the_network_reads_no_tensor(weights_file, monkeypatch):
  def refuse(path):
    raise AssertionError(f"read {path}")

  monkeypatch.setattr(inception_weights, "read_weights", refuse)
  network = features.InceptionFeatures(weights_file)
  assert network._network is None and network.params.loads == 0
  assert network.description["inception_weights"] == "random.npz"


@pytest.mark.parametrize(
  "name", ["tiny_state_dict_zip.pth", "tiny_state_dict_legacy.pth", "npz"]
)
def test_damaged_files_fail_when_the_network_is_made(tmp_path, name):
  """The check at the start of a run: well-formed files pass, a file cut
  short (by its last bytes: the tensors, not the header) fails."""
  if name == "npz":
    path = str(tmp_path / "w.npz")
    np.savez(path, **inception_random.tiny_state_dict())
  else:
    path = str(tmp_path / name)
    shutil.copy(os.path.join(DATA, name), path)
  inception_weights.check_file(path)
  with open(path, "rb") as f:
    data = f.read()
  cut = str(tmp_path / ("cut" + os.path.splitext(path)[1]))
  with open(cut, "wb") as f:
    f.write(data[:-40] if name != "npz" else data[: len(data) // 2])
  with pytest.raises(DataError, match="is not a readable state dict"):
    features.InceptionFeatures(cut)


def test_safetensors_length_is_checked(tmp_path):
  path = str(tmp_path / "w.safetensors")
  save_file({"a": np.zeros((3, 4), np.float32)}, path)
  inception_weights.check_file(path)
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    data = f.read()
  for changed in (data[:-1], data + b"\0"):  # Cut short, or too long.
    with open(path, "wb") as f:
      f.write(changed)
    expected = f"holds {len(changed)} bytes, not the {size} its header"
    with pytest.raises(DataError, match=expected):
      inception_weights.check_file(path)
