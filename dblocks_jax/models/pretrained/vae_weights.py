"""SD-VAE weights in the diffusers layout (safetensors) <-> `AutoencoderKL`.

The user downloads `diffusion_pytorch_model.safetensors` of
`stabilityai/sd-vae-ft-ema` once (nothing here touches the network) and
points `load_vae` at it. Names follow diffusers' AutoencoderKL; the older
attention names (`query`, `key`, `value`, `proj_attn`) are accepted too.

Layouts: a PyTorch conv weight [out, in, kh, kw] is a Flax kernel
[kh, kw, in, out]; a Linear weight [out, in] (or [out, in, 1, 1] in old
checkpoints) is a kernel [in, out]; GroupNorm `weight` is `scale`.
"""

import os

import jax
import numpy as np
from flax import nnx

from dblocks_jax import errors
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.models.pretrained import vae as vae_lib
from dblocks_jax.models.pretrained import weight_files

_LEGACY_ATTENTION = {
  "to_q": "query",
  "to_k": "key",
  "to_v": "value",
  "to_out.0": "proj_attn",
}
_NEEDED_BY = "the SD-VAE's weight file (latent DiT)"


def diffusers_name(path: tuple) -> str:
  """An NNX state path of AutoencoderKL -> its diffusers key."""
  parts = [str(p) for p in path]
  leaf = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
  name = ".".join(parts[:-1] + [leaf])
  resampler = "downsamplers.0" if parts[0] == "encoder" else "upsamplers.0"
  name = name.replace(".resample.", f".{resampler}.")
  name = name.replace(".attention.", ".attentions.0.")
  return name.replace(".to_out.", ".to_out.0.")


def _to_flax(array: np.ndarray, path: tuple, target_shape) -> np.ndarray:
  array = np.asarray(array, np.float32)
  if str(path[-1]) == "kernel":
    if len(target_shape) == 4:
      array = array.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> HWIO.
    else:
      array = array.reshape(array.shape[0], -1).T  # [out, in(,1,1)] -> IO.
  return array


def _to_torch(array: np.ndarray, path: tuple) -> np.ndarray:
  array = np.asarray(array, np.float32)
  if str(path[-1]) == "kernel":
    return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
  return array


def _find(tensors: dict, name: str):
  if name in tensors:
    return tensors[name]
  for new, old in _LEGACY_ATTENTION.items():
    legacy = name.replace(f".{new}.", f".{old}.")
    if legacy in tensors:
      return tensors[legacy]
  return None


def _check_exists(path: str) -> None:
  if not os.path.exists(path):
    raise ConfigError(
      f"VAE weight file {path} does not exist. Download it once on a machine"
      " with network access, e.g. `huggingface-cli download"
      " stabilityai/sd-vae-ft-ema diffusion_pytorch_model.safetensors"
      " --local-dir DIR`, and pass"
      " --config.encode.vae_weights=DIR/diffusion_pytorch_model.safetensors."
    )


def check_file(path: str) -> None:
  """The check at the start of a run, which builds nothing: the file exists
  and is a safetensors file of the length its header lists (no tensor is
  read).

  Raises:
    ConfigError: the file is missing (the message says how to get it).
    DataError: the file is damaged or not safetensors.
    MissingExtraError: the package that reads it is not installed.
  """
  _check_exists(path)
  try:
    weight_files.check_safetensors(path)
  except (ValueError, OSError) as e:
    raise DataError(
      f"VAE weight file {path} is not a readable safetensors file ({e});"
      " download it again."
    ) from e
  errors.optional_import("safetensors.numpy", _NEEDED_BY)  # Read later.


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file, or a clear error."""
  check_file(path)  # A damaged file is named before a missing package.
  safetensors = errors.optional_import("safetensors", _NEEDED_BY)
  load_file = errors.optional_import("safetensors.numpy", _NEEDED_BY).load_file
  try:
    return load_file(path)
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise DataError(
      f"VAE weight file {path} is not a readable safetensors file ({e});"
      " download it again."
    ) from e


def load_vae(path: str, config: vae_lib.VAEConfig | None = None):
  """Builds `AutoencoderKL(config)` with the weights of a diffusers file.

  Raises:
    ConfigError: the file is missing.
    DataError: the file is unreadable, lacks a tensor of the architecture, or
      holds one of another shape (a different VAE config).
  """
  config = config or vae_lib.VAEConfig()
  tensors = read_safetensors(path)
  model = nnx.eval_shape(
    lambda: vae_lib.AutoencoderKL(config, rngs=nnx.Rngs(0))
  )
  graphdef, state = nnx.split(model)
  flat = nnx.to_flat_state(state)
  missing, loaded = [], []
  for key, variable in flat:
    name = diffusers_name(key)
    found = _find(tensors, name)
    if found is None:
      missing.append(name)
      continue
    value = _to_flax(found, key, variable.shape)
    if value.shape != tuple(variable.shape):
      raise DataError(
        f"VAE weight {name} in {path} has shape {list(found.shape)}, which"
        f" does not fit {list(variable.shape)} of the configured VAE"
        f" ({config}); use the weights of the same architecture."
      )
    loaded.append((key, variable.replace(jax.numpy.asarray(value))))
  if missing:
    raise DataError(
      f"VAE weight file {path} lacks {len(missing)} tensors of the diffusers"
      f" AutoencoderKL layout, e.g. {missing[:3]}; is it the VAE"
      " (diffusion_pytorch_model.safetensors of sd-vae-ft-ema)?"
    )
  return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def save_vae(model: vae_lib.AutoencoderKL, path: str) -> None:
  """Writes the model's weights in the diffusers layout (safetensors)."""
  save_file = errors.optional_import("safetensors.numpy", _NEEDED_BY).save_file
  tensors = {
    diffusers_name(key): np.ascontiguousarray(_to_torch(v[...], key))
    for key, v in nnx.to_flat_state(nnx.state(model))
  }
  save_file(tensors, path)
