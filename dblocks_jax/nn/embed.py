"""Embeddings: patches, positions, noise levels, discrete targets."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import init


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """[batch, H, W, C] -> [batch, (H/p)(W/p), p*p*C], row-major patches."""
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"image {h}x{w} is not divisible by patch size {p}")
  x = images.reshape(b, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(
    b, (h // p) * (w // p), p * p * c
  )


def unpatchify(tokens: jax.Array, patch_size: int, height: int, width: int):
  """Inverse of `patchify`: [batch, (H/p)(W/p), p*p*C] -> [batch, H, W, C]."""
  b, _, d = tokens.shape
  p = patch_size
  c = d // (p * p)
  x = tokens.reshape(b, height // p, width // p, p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


def sincos_position_embedding_2d(grid_size: int, width: int) -> jax.Array:
  """DiT's fixed 2-D sin-cos position embedding: [grid_size**2, width].

  Token t = row * grid_size + col. The first half of the channels encodes the
  column and the second half the row (the reference's meshgrid order), each
  as [sin(pos w), cos(pos w)] with w = 10000^(-k / (width / 4)).
  """
  if width % 4:
    raise ValueError(f"width {width} must be divisible by 4")
  quarter = width // 4
  omega = 1.0 / 10000.0 ** (jnp.arange(quarter, dtype=jnp.float32) / quarter)
  rows, cols = jnp.meshgrid(
    jnp.arange(grid_size, dtype=jnp.float32),
    jnp.arange(grid_size, dtype=jnp.float32),
    indexing="ij",
  )

  def encode(pos):
    args = pos.reshape(-1)[:, None] * omega[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)

  return jnp.concatenate([encode(cols), encode(rows)], axis=-1)


class PatchEmbed(nnx.Module):
  """Non-overlapping patches -> linear projection (= Conv2d kernel=stride=p).

  images: [batch, H, W, C] -> [batch, num_patches, width] in `dtype`. The
  kernel is [p*p*C, width], so Xavier init gets the reference conv's fans.
  """

  def __init__(
    self,
    patch_size: int,
    channels: int,
    width: int,
    *,
    kernel_init=init.TRUNC_NORMAL_002,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    self.patch_size = patch_size
    self.proj = init.linear(
      patch_size * patch_size * channels,
      width,
      kernel_init=kernel_init,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.proj(patchify(images, self.patch_size))


def sinusoidal_embedding(t: jax.Array, dim: int, max_period=10000.0):
  """t: [batch] -> [batch, dim] = [cos(t f), sin(t f)], f = period^(-i/half)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
  args = t[:, None].astype(jnp.float32) * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class NoiseLevelEmbedder(nnx.Module):
  """c_noise: [batch] -> [batch, cond_dim], sinusoid(256) -> MLP (SiLU).

  Weights N(0, 0.02), biases zero, as in the official and DiT embedders.
  The sinusoid is float32; the MLP computes in `dtype`.
  """

  def __init__(
    self,
    cond_dim: int,
    *,
    frequency_dim: int = 256,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    self.frequency_dim = frequency_dim
    kw = dict(
      kernel_init=init.NORMAL_002,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.fc1 = init.linear(frequency_dim, cond_dim, **kw)
    self.fc2 = init.linear(cond_dim, cond_dim, **kw)

  def __call__(self, c_noise: jax.Array) -> jax.Array:
    h = sinusoidal_embedding(c_noise, self.frequency_dim)
    return self.fc2(jax.nn.silu(self.fc1(h)))


class LabelEmbedder(nnx.Module):
  """Class labels -> [batch, width], N(0, 0.02) rows (DiT's LabelEmbedder).

  With `null_class` the table has one extra row, index `num_classes`, the
  "no label" input of classifier-free guidance; the objective swaps labels
  for it (label dropout). The table is stored in `param_dtype`.
  """

  def __init__(
    self,
    num_classes: int,
    width: int,
    *,
    null_class: bool,
    param_dtype=jnp.float32,
    rngs,
  ):
    self.num_classes = num_classes
    rows = num_classes + int(null_class)
    self.table = nnx.Param(
      init.NORMAL_002(rngs.params(), (rows, width), param_dtype)
    )

  def __call__(self, labels: jax.Array) -> jax.Array:
    """labels: [batch] int in [0, num_classes] -> [batch, width]."""
    return self.table[...][labels]


class FixedTable(nnx.Variable):
  """A non-trainable embedding table (the `independent` sharing mode)."""


class TargetTable(nnx.Module):
  """The table E [num_classes, width] whose rows are the diffusion targets.

  Targets are L2-normalised rows (Dieleman et al. 2022). In the `shared` mode
  the table is a trained nnx.Param, N(0, 0.02) as in the official code; in the
  `independent` mode it is a FixedTable drawn from its own seed, so that every
  block, trained anywhere, diffuses in the same space. A trained table is
  stored in `param_dtype` (a fixed one in float32); the targets are float32.
  """

  def __init__(
    self,
    num_classes: int,
    width: int,
    *,
    trainable: bool,
    param_dtype=jnp.float32,
    rngs,
  ):
    value = init.NORMAL_002(rngs.params(), (num_classes, width), jnp.float32)
    self.table = (
      nnx.Param(value.astype(param_dtype)) if trainable else FixedTable(value)
    )

  def normalized(self) -> jax.Array:
    """[num_classes, width] rows of unit L2 norm, float32."""
    table = self.table[...].astype(jnp.float32)
    return table / jnp.maximum(
      jnp.linalg.norm(table, axis=-1, keepdims=True), 1e-12
    )

  def __call__(self, labels: jax.Array) -> jax.Array:
    """labels: [batch] int -> [batch, width] unit-norm targets."""
    return self.normalized()[labels]
