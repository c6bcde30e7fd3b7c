"""The Stable-Diffusion VAE (AutoencoderKL, `sd-vae-ft-ema`) in Flax NNX.

The architecture of diffusers' `AutoencoderKL` with its default blocks
(`DownEncoderBlock2D` / `UpDecoderBlock2D`), so that weights in the diffusers
layout load one to one (`vae_weights.load_vae`). Images are NHWC in [-1, 1];
latents are NHWC with `latent_channels` channels at 1/2^(levels-1) of the
resolution (256x256x3 -> 32x32x4 for the SD VAE).

  Encoder: conv_in -> down blocks (ResNet blocks, stride-2 conv between
    levels, padded right and bottom by one) -> mid block (ResNet, one-head
    self-attention, ResNet) -> GroupNorm -> SiLU -> conv_out (2 x latent
    channels: mean and log-variance) -> quant_conv (1x1).
  Decoder: post_quant_conv (1x1) -> conv_in -> mid block -> up blocks
    (layers_per_block + 1 ResNet blocks, nearest 2x upsampling and a conv
    between levels) -> GroupNorm -> SiLU -> conv_out.

Diffusion models train on `scaling_factor * latent` (0.18215 for SD).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """diffusers' AutoencoderKL config fields (defaults: sd-vae-ft-ema)."""

  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


EPS = 1e-6


def _conv(c_in, c_out, kernel, *, rngs, stride=1, padding="SAME"):
  return nnx.Conv(
    c_in,
    c_out,
    (kernel, kernel),
    strides=stride,
    padding=padding,
    rngs=rngs,
  )


def _norm(channels, groups, *, rngs):
  return nnx.GroupNorm(channels, num_groups=groups, epsilon=EPS, rngs=rngs)


class ResnetBlock(nnx.Module):
  """GN -> SiLU -> conv3 -> GN -> SiLU -> conv3, plus a (1x1) shortcut."""

  def __init__(self, c_in: int, c_out: int, groups: int, *, rngs):
    self.norm1 = _norm(c_in, groups, rngs=rngs)
    self.conv1 = _conv(c_in, c_out, 3, rngs=rngs)
    self.norm2 = _norm(c_out, groups, rngs=rngs)
    self.conv2 = _conv(c_out, c_out, 3, rngs=rngs)
    self.conv_shortcut = (
      _conv(c_in, c_out, 1, rngs=rngs) if c_in != c_out else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    return x + h


class SpatialAttention(nnx.Module):
  """One-head self-attention over the H*W positions, with a residual.

  x: [batch, H, W, C] -> same.
  """

  def __init__(self, channels: int, groups: int, *, rngs):
    self.group_norm = _norm(channels, groups, rngs=rngs)
    self.to_q = nnx.Linear(channels, channels, rngs=rngs)
    self.to_k = nnx.Linear(channels, channels, rngs=rngs)
    self.to_v = nnx.Linear(channels, channels, rngs=rngs)
    self.to_out = nnx.Linear(channels, channels, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    tokens = self.group_norm(x).reshape(b, h * w, c)
    q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
    logits = jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(c)
    out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1), v)
    return x + self.to_out(out).reshape(b, h, w, c)


class MidBlock(nnx.Module):
  def __init__(self, channels: int, groups: int, *, rngs):
    self.resnets = nnx.List(
      [ResnetBlock(channels, channels, groups, rngs=rngs) for _ in range(2)]
    )
    self.attention = SpatialAttention(channels, groups, rngs=rngs)

  def __call__(self, x):
    return self.resnets[1](self.attention(self.resnets[0](x)))


class Downsample(nnx.Module):
  """Pad right and bottom by one, then a 3x3 conv of stride 2."""

  def __init__(self, channels: int, *, rngs):
    self.conv = _conv(
      channels, channels, 3, stride=2, padding="VALID", rngs=rngs
    )

  def __call__(self, x):
    return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
  """Nearest-neighbour 2x, then a 3x3 conv."""

  def __init__(self, channels: int, *, rngs):
    self.conv = _conv(channels, channels, 3, rngs=rngs)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Level(nnx.Module):
  """One resolution level: ResNet blocks, then an optional resampler."""

  def __init__(self, c_in, c_out, num_resnets, groups, resample, *, rngs):
    self.resnets = nnx.List(
      [
        ResnetBlock(c_in if i == 0 else c_out, c_out, groups, rngs=rngs)
        for i in range(num_resnets)
      ]
    )
    self.resample = resample(c_out, rngs=rngs) if resample else None

  def __call__(self, x):
    for resnet in self.resnets:
      x = resnet(x)
    return self.resample(x) if self.resample is not None else x


class Encoder(nnx.Module):
  def __init__(self, config: VAEConfig, *, rngs):
    channels, groups = config.block_out_channels, config.norm_num_groups
    self.conv_in = _conv(config.in_channels, channels[0], 3, rngs=rngs)
    self.down_blocks = nnx.List(
      [
        Level(
          channels[max(i - 1, 0)],
          c,
          config.layers_per_block,
          groups,
          Downsample if i < len(channels) - 1 else None,
          rngs=rngs,
        )
        for i, c in enumerate(channels)
      ]
    )
    self.mid_block = MidBlock(channels[-1], groups, rngs=rngs)
    self.conv_norm_out = _norm(channels[-1], groups, rngs=rngs)
    self.conv_out = _conv(
      channels[-1], 2 * config.latent_channels, 3, rngs=rngs
    )

  def __call__(self, images):
    x = self.conv_in(images)
    for block in self.down_blocks:
      x = block(x)
    x = self.mid_block(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
  def __init__(self, config: VAEConfig, *, rngs):
    channels = tuple(reversed(config.block_out_channels))
    groups = config.norm_num_groups
    self.conv_in = _conv(config.latent_channels, channels[0], 3, rngs=rngs)
    self.mid_block = MidBlock(channels[0], groups, rngs=rngs)
    self.up_blocks = nnx.List(
      [
        Level(
          channels[max(i - 1, 0)],
          c,
          config.layers_per_block + 1,
          groups,
          Upsample if i < len(channels) - 1 else None,
          rngs=rngs,
        )
        for i, c in enumerate(channels)
      ]
    )
    self.conv_norm_out = _norm(channels[-1], groups, rngs=rngs)
    self.conv_out = _conv(channels[-1], config.out_channels, 3, rngs=rngs)

  def __call__(self, latents):
    x = self.mid_block(self.conv_in(latents))
    for block in self.up_blocks:
      x = block(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
  """encode: images [b, H, W, 3] in [-1, 1] -> (mean, logvar) of the
  latent posterior, each [b, H/f, W/f, latent_channels]; decode: latents ->
  images. `scaling_factor` is applied by the caller (the data pipeline)."""

  def __init__(self, config: VAEConfig | None = None, *, rngs: nnx.Rngs):
    config = config or VAEConfig()
    self.config = config
    c = 2 * config.latent_channels
    self.encoder = Encoder(config, rngs=rngs)
    self.quant_conv = _conv(c, c, 1, rngs=rngs)
    self.post_quant_conv = _conv(
      config.latent_channels, config.latent_channels, 1, rngs=rngs
    )
    self.decoder = Decoder(config, rngs=rngs)

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    moments = self.quant_conv(self.encoder(images))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, latents: jax.Array) -> jax.Array:
    return self.decoder(self.post_quant_conv(latents))
