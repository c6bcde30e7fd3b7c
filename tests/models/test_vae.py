"""The SD VAE (AutoencoderKL) and its diffusers weight layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs
from flax import nnx

from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.models.pretrained import vae, vae_weights

TINY = vae.VAEConfig(
  block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4
)


def _tiny(seed=0):
  return vae.AutoencoderKL(TINY, rngs=nnx.Rngs(seed))


def _names(model):
  return {
    vae_weights.diffusers_name(k)
    for k, _ in nnx.to_flat_state(nnx.state(model))
  }


def _resnet(prefix, shortcut=False):
  names = [
    f"{prefix}.{layer}.{p}"
    for layer in ("norm1", "conv1", "norm2", "conv2")
    for p in ("weight", "bias")
  ]
  if shortcut:
    names += [f"{prefix}.conv_shortcut.weight", f"{prefix}.conv_shortcut.bias"]
  return names


def _expected_tiny_layout():
  """The diffusers AutoencoderKL keys of TINY, written out by module."""
  names = []
  for side in ("encoder", "decoder"):
    for layer in ("conv_in", "conv_norm_out", "conv_out"):
      names += [f"{side}.{layer}.weight", f"{side}.{layer}.bias"]
    names += _resnet(f"{side}.mid_block.resnets.0")
    names += _resnet(f"{side}.mid_block.resnets.1")
    attention = f"{side}.mid_block.attentions.0"
    for layer in ("group_norm", "to_q", "to_k", "to_v", "to_out.0"):
      names += [f"{attention}.{layer}.weight", f"{attention}.{layer}.bias"]
  # Encoder: 8 -> 8 (then downsample), 8 -> 16.
  names += _resnet("encoder.down_blocks.0.resnets.0")
  names += ["encoder.down_blocks.0.downsamplers.0.conv.weight"]
  names += ["encoder.down_blocks.0.downsamplers.0.conv.bias"]
  names += _resnet("encoder.down_blocks.1.resnets.0", shortcut=True)
  # Decoder: 16 -> 16 x2 (then upsample), 16 -> 8 and 8 -> 8.
  names += _resnet("decoder.up_blocks.0.resnets.0")
  names += _resnet("decoder.up_blocks.0.resnets.1")
  names += ["decoder.up_blocks.0.upsamplers.0.conv.weight"]
  names += ["decoder.up_blocks.0.upsamplers.0.conv.bias"]
  names += _resnet("decoder.up_blocks.1.resnets.0", shortcut=True)
  names += _resnet("decoder.up_blocks.1.resnets.1")
  for conv in ("quant_conv", "post_quant_conv"):
    names += [f"{conv}.weight", f"{conv}.bias"]
  return set(names)


def test_names_follow_the_diffusers_layout():
  assert _names(_tiny()) == _expected_tiny_layout()


def test_sd_vae_size_and_shapes():
  """sd-vae-ft-ema: 83,653,863 parameters, 256x256x3 <-> 32x32x4."""
  model = nnx.eval_shape(lambda: vae.AutoencoderKL(rngs=nnx.Rngs(0)))
  assert sum(v.size for _, v in nnx.to_flat_state(nnx.state(model))) == (
    83_653_863
  )
  graphdef, state = nnx.split(model)

  def encode(state, x):
    return nnx.merge(graphdef, state).encode(x)

  images = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  mean, logvar = jax.eval_shape(encode, state, images)
  assert mean.shape == logvar.shape == (1, 32, 32, 4)


def _torch_conv(x, weight, bias, stride=1, pad=(1, 1, 1, 1)):
  """PyTorch Conv2d semantics in numpy: x [C, H, W], weight [O, C, k, k];
  pad = (left, right, top, bottom)."""
  left, right, top, bottom = pad
  x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
  k = weight.shape[-1]
  out_h = (x.shape[1] - k) // stride + 1
  out_w = (x.shape[2] - k) // stride + 1
  out = np.zeros((weight.shape[0], out_h, out_w))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k]
      out[:, i, j] = np.einsum("chw,ochw->o", patch, weight)
  return out + bias[:, None, None]


def _load_with(tensors, tmp_path):
  path = str(tmp_path / "vae.safetensors")
  needs("safetensors.numpy", "weights").save_file(tensors, path)
  return vae_weights.load_vae(path, TINY)


def _random_tensors(model, seed=0):
  rng = np.random.default_rng(seed)
  tensors = {}
  for key, v in nnx.to_flat_state(nnx.state(model)):
    torch_shape = vae_weights._to_torch(np.zeros(v.shape), key).shape
    tensors[vae_weights.diffusers_name(key)] = rng.normal(
      size=torch_shape
    ).astype(np.float32)
  return tensors


def test_torch_layout_convs_match_pytorch_semantics(tmp_path):
  """A loaded conv computes what PyTorch's does with the same tensors,
  including the stride-2 downsampler padded right and bottom only."""
  tensors = _random_tensors(_tiny())
  model = _load_with(tensors, tmp_path)
  x = np.random.default_rng(1).normal(size=(6, 6, 8)).astype(np.float32)
  conv = "encoder.down_blocks.0.resnets.0.conv1"
  expected = _torch_conv(
    x.transpose(2, 0, 1), tensors[f"{conv}.weight"], tensors[f"{conv}.bias"]
  )
  got = model.encoder.down_blocks[0].resnets[0].conv1(jnp.asarray(x[None]))[0]
  np.testing.assert_allclose(got, expected.transpose(1, 2, 0), atol=1e-4)
  down = "encoder.down_blocks.0.downsamplers.0.conv"
  expected = _torch_conv(
    x.transpose(2, 0, 1),
    tensors[f"{down}.weight"],
    tensors[f"{down}.bias"],
    stride=2,
    pad=(0, 1, 0, 1),
  )
  got = model.encoder.down_blocks[0].resample(jnp.asarray(x[None]))[0]
  assert got.shape == (3, 3, 8)
  np.testing.assert_allclose(got, expected.transpose(1, 2, 0), atol=1e-4)
  # A Linear: y = x W^T + b with W [out, in].
  q = "encoder.mid_block.attentions.0.to_q"
  tokens = np.random.default_rng(2).normal(size=(5, 16)).astype(np.float32)
  got = model.encoder.mid_block.attention.to_q(jnp.asarray(tokens))
  expected = tokens @ tensors[f"{q}.weight"].T + tensors[f"{q}.bias"]
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_save_and_load_round_trip(tmp_path):
  needs("safetensors", "weights")
  model = _tiny(seed=3)
  path = str(tmp_path / "vae.safetensors")
  vae_weights.save_vae(model, path)
  loaded = vae_weights.load_vae(path, TINY)
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1)
  mean, logvar = model.encode(x)
  mean2, logvar2 = loaded.encode(x)
  np.testing.assert_array_equal(mean, mean2)
  np.testing.assert_array_equal(logvar, logvar2)
  np.testing.assert_array_equal(model.decode(mean), loaded.decode(mean))
  assert mean.shape == (2, 4, 4, 4)
  assert model.decode(mean).shape == (2, 8, 8, 3)


def test_legacy_attention_names_load(tmp_path):
  tensors = _random_tensors(_tiny())
  legacy = {}
  for name, value in tensors.items():
    for new, old in (
      ("to_q", "query"),
      ("to_k", "key"),
      ("to_v", "value"),
      ("to_out.0", "proj_attn"),
    ):
      name = name.replace(f".{new}.", f".{old}.")
    if ".proj_attn." in name and value.ndim == 2:
      value = value[:, :, None, None]  # Old checkpoints: 1x1 conv weights.
    legacy[name] = value
  a = _load_with(tensors, tmp_path / "a")
  b = _load_with(legacy, tmp_path / "b")
  x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3), minval=-1)
  np.testing.assert_allclose(a.encode(x)[0], b.encode(x)[0], atol=1e-6)


@pytest.fixture(autouse=True)
def _dirs(tmp_path):
  for name in ("a", "b"):
    (tmp_path / name).mkdir()


def test_missing_file_says_how_to_get_it(tmp_path):
  with pytest.raises(ConfigError, match="huggingface-cli download"):
    vae_weights.load_vae(str(tmp_path / "nowhere.safetensors"), TINY)


def test_corrupt_file_is_a_clear_error(tmp_path):
  path = tmp_path / "vae.safetensors"
  path.write_bytes(b"\x00\x01 not a safetensors file" * 10)
  with pytest.raises(DataError, match="not a readable safetensors"):
    vae_weights.load_vae(str(path), TINY)


def test_mismatched_architecture_names_the_tensor(tmp_path):
  needs("safetensors", "weights")
  other = vae.VAEConfig(
    block_out_channels=(8, 32), layers_per_block=1, norm_num_groups=4
  )
  path = str(tmp_path / "vae.safetensors")
  vae_weights.save_vae(vae.AutoencoderKL(other, rngs=nnx.Rngs(0)), path)
  with pytest.raises(DataError, match=r"has shape \[32") as error:
    vae_weights.load_vae(path, TINY)
  assert "encoder." in str(error.value) or "decoder." in str(error.value)


def test_missing_tensors_are_listed(tmp_path):
  tensors = _random_tensors(_tiny())
  del tensors["quant_conv.weight"]
  with pytest.raises(DataError, match="quant_conv.weight"):
    _load_with(tensors, tmp_path)
