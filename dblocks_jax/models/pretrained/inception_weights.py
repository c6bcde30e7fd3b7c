"""pytorch-fid's FID Inception weights <-> `inception.InceptionV3`.

The user downloads `pt_inception-2015-12-05-6726825d.pth` once (nothing
here touches the network; `FID_WEIGHTS_URL`) and passes its path. It is read
without torch, and without running code from it (`torch_files`); a `.npz`
or `.safetensors` file with the same tensor names works too. Names are
torchvision's (`Mixed_6b.branch7x7_2.conv.weight`); `fc.*`, `AuxLogits.*`
and `num_batches_tracked` are not used.

Layouts: a PyTorch conv weight [out, in, kh, kw] is a Flax kernel
[kh, kw, in, out]; BatchNorm `weight`, `bias`, `running_mean`, `running_var`
are `scale`, `bias`, `mean`, `var`.
"""

import hashlib
import os

import jax
import numpy as np
from flax import nnx

from dblocks_jax import errors
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.models.pretrained import inception as inception_lib
from dblocks_jax.models.pretrained import torch_files, weight_files

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
  + FID_WEIGHTS_FILE
)
FLAG = "--config.eval.inception_weights=PATH"
_SAFETENSORS = "an Inception .safetensors weight file"
_LEAF_NAMES = {
  "kernel": "weight",
  "scale": "weight",
  "mean": "running_mean",
  "var": "running_var",
}


def torch_name(path: tuple) -> str:
  """An NNX state path of InceptionV3 -> its torchvision state-dict key."""
  parts = [str(p) for p in path]
  return ".".join(parts[:-1] + [_LEAF_NAMES.get(parts[-1], parts[-1])])


def torch_shape(path: tuple, shape) -> tuple[int, ...]:
  """The PyTorch shape of a Flax value (conv kernels HWIO -> OIHW)."""
  if str(path[-1]) == "kernel":
    kh, kw, c_in, c_out = shape
    return (c_out, c_in, kh, kw)
  return tuple(shape)


def _to_flax(array: np.ndarray, path: tuple) -> np.ndarray:
  array = np.asarray(array, np.float32)
  return array.transpose(2, 3, 1, 0) if str(path[-1]) == "kernel" else array


def file_sha256(path: str) -> str:
  """The hex sha256 of a file (identifies the weights in eval.json)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def read_weights(path: str) -> dict[str, np.ndarray]:
  """All tensors of a .pth (torch.save), .npz or .safetensors file by name.

  Raises:
    ConfigError: the file is missing (the message gives the download URL).
    DataError: the file is unreadable or damaged, or a .pth asks to import
      more than tensors need (`torch_files.UnsafeFileError`; never run).
  """
  _check_exists(path)
  if path.endswith(".safetensors"):  # A missing package is not a damaged file.
    read = errors.optional_import("safetensors.numpy", _SAFETENSORS).load_file
  elif path.endswith(".npz"):
    read = _read_npz
  else:
    read = torch_files.load_state_dict
  try:
    return read(path)
  except torch_files.UnsafeFileError:
    raise  # Names the file and what it asked for; downloading won't help.
  except Exception as e:  # Readers of damaged files raise all kinds.
    raise DataError(
      f"Inception weight file {path} is not a readable state dict ({e});"
      f" download it again from {FID_WEIGHTS_URL}."
    ) from e


def _read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as tensors:
    return dict(tensors)


def _check_exists(path: str) -> None:
  if not os.path.isfile(path):
    raise ConfigError(
      f"Inception weight file {path} does not exist. Download pytorch-fid's"
      f" FID weights once from {FID_WEIGHTS_URL} and pass {FLAG}."
    )


def check_file(path: str) -> str:
  """The check at the start of a run, which builds nothing: the file exists,
  is a well-formed .pth, .npz or .safetensors of the right length
  (`weight_files.check`, no tensor read) and, for the official file, has
  its sha256. Returns the file's sha256.

  Raises:
    ConfigError: the file is missing (the message gives the download URL).
    DataError: the file is damaged, of another format or unsafe.
    MissingExtraError: a .safetensors file without the package that reads it.
  """
  _check_exists(path)
  try:
    weight_files.check(path)
  except torch_files.UnsafeFileError:
    raise  # Names the file and what it asked for; downloading won't help.
  except (torch_files.FormatError, OSError) as e:
    raise DataError(
      f"Inception weight file {path} is not a readable state dict ({e});"
      f" download it again from {FID_WEIGHTS_URL}."
    ) from e
  if path.endswith(".safetensors"):  # Read later: without it, fail now.
    errors.optional_import("safetensors.numpy", _SAFETENSORS)
  return _check_download(path)


def _check_download(path: str) -> str:
  """The file's sha256; the official file must match its name's prefix."""
  sha256 = file_sha256(path)
  prefix = FID_WEIGHTS_FILE.rsplit("-", 1)[-1].split(".")[0]
  if os.path.basename(path) == FID_WEIGHTS_FILE and not sha256.startswith(
    prefix
  ):
    raise DataError(
      f"Inception weight file {path} has sha256 {sha256[:16]}..., not"
      f" {prefix}... (a damaged download); download it again from"
      f" {FID_WEIGHTS_URL}."
    )
  return sha256


def load_inception(path: str) -> inception_lib.InceptionV3:
  """Builds `InceptionV3` with the weights of a file (see `read_weights`).

  Raises:
    ConfigError: the file is missing.
    DataError: the file is unreadable, a damaged download of the official
      file, lacks a tensor of the network, or holds one of another shape.
  """
  return load_with_sha256(path)[0]


def load_with_sha256(path: str) -> tuple[inception_lib.InceptionV3, str]:
  """`load_inception`, and the file's sha256 (hashed once, for eval.json)."""
  tensors = read_weights(path)
  sha256 = _check_download(path)
  model = nnx.eval_shape(lambda: inception_lib.InceptionV3(rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  missing, loaded = [], []
  for key, variable in nnx.to_flat_state(state):
    name = torch_name(key)
    if name not in tensors:
      missing.append(name)
      continue
    expected = torch_shape(key, variable.shape)
    found = np.shape(tensors[name])
    if found != expected:
      raise DataError(
        f"Inception weight {name} in {path} has shape {list(found)}, not"
        f" {list(expected)}; use pytorch-fid's FID Inception weights."
      )
    value = jax.numpy.asarray(_to_flax(tensors[name], key))
    loaded.append((key, variable.replace(value)))
  if missing:
    raise DataError(
      f"Inception weight file {path} lacks {len(missing)} tensors of the FID"
      f" Inception-v3, e.g. {missing[:3]}; use pytorch-fid's weights"
      f" ({FID_WEIGHTS_URL})."
    )
  return nnx.merge(graphdef, nnx.from_flat_state(loaded)), sha256
