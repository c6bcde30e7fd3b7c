"""The FID Inception-v3 (pool features) in Flax NNX.

The network of pytorch-fid's `InceptionV3([3])` with `use_fid_inception=True`
(the graph of the TensorFlow FID code, `inception-2015-12-05`), up to the
2048-d global average pool; torchvision's Inception-v3 with four kinds of
patched blocks: the average pools of the A, C and first E blocks
(Mixed_5b-5d, Mixed_6b-6e, Mixed_7b) leave the zero padding out of the mean,
and the last E block (Mixed_7c) max-pools its pool branch. Attribute names
follow the torchvision state dict (`Mixed_5b.branch1x1.conv.weight`), so
pytorch-fid's weights load one to one (`inception_weights.load_inception`).

Inputs are pixels in [0, 1], NHWC, of any size, with 1 (repeated to 3) or 3
channels; like pytorch-fid with `resize_input=True, normalize_input=True`
they are resized to 299x299 (bilinear, PyTorch's `align_corners=False`, no
antialiasing) and mapped to [-1, 1]. Stem, for 299x299:

  Conv2d_1a_3x3 (stride 2) 149 -> Conv2d_2a_3x3 147 -> Conv2d_2b_3x3 147
  -> max pool 73 -> Conv2d_3b_1x1 73 -> Conv2d_4a_3x3 71 -> max pool 35
  -> Mixed_5b..5d 35 -> Mixed_6a 17 -> Mixed_6b..6e 17 -> Mixed_7a 8
  -> Mixed_7b, 7c 8x8x2048 -> mean over H, W -> [batch, 2048].

Convolutions run at `Precision.HIGHEST` (full float32 on accelerators too).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPSILON = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST
# Factorised convolutions: a row (1 x k) or a column (k x 1), same size.
_ROW_7 = {"kernel": (1, 7), "padding": (0, 3)}
_COLUMN_7 = {"kernel": (7, 1), "padding": (3, 0)}
_ROW_3 = {"kernel": (1, 3), "padding": (0, 1)}
_COLUMN_3 = {"kernel": (3, 1), "padding": (1, 0)}


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
  """Conv (no bias) -> BatchNorm (inference statistics) -> ReLU."""

  def __init__(self, c_in, c_out, kernel, *, rngs, stride=1, padding=0):
    kernel, (ph, pw) = _pair(kernel), _pair(padding)
    self.conv = nnx.Conv(
      c_in,
      c_out,
      kernel,
      strides=stride,
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      precision=_HIGHEST,
      rngs=rngs,
    )
    self.bn = nnx.BatchNorm(
      c_out, use_running_average=True, epsilon=BN_EPSILON, rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


def max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
  """3x3 max pool of [b, H, W, C]; padding counts as -inf."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad
  )


def avg_pool_excluding_padding(x: jax.Array) -> jax.Array:
  """3x3 mean of [b, H, W, C], stride 1, padding 1, over real pixels only
  (PyTorch's `count_include_pad=False`, TensorFlow's SAME average pool)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
  return total / count


class FIDInceptionA(nnx.Module):
  """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

  def __init__(self, c_in: int, pool_features: int, *, rngs):
    self.branch1x1 = BasicConv2d(c_in, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(c_in, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(c_in, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    pool = self.branch_pool(avg_pool_excluding_padding(x))
    return jnp.concatenate([self.branch1x1(x), b5, b3, pool], axis=-1)


class InceptionB(nnx.Module):
  """Reduction 35 -> 17: strided 3x3, strided double 3x3, max pool."""

  def __init__(self, c_in: int, *, rngs):
    self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate(
      [self.branch3x3(x), b3, max_pool(x, stride=2)], axis=-1
    )


class FIDInceptionC(nnx.Module):
  """17x17 block with factorised 7x7 convolutions (1x7 and 7x1)."""

  def __init__(self, c_in: int, channels_7x7: int, *, rngs):
    c7 = channels_7x7
    row, col = _ROW_7, _COLUMN_7
    self.branch1x1 = BasicConv2d(c_in, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(c_in, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, **row, rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, **col, rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col, rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row, rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col, rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row, rngs=rngs)
    self.branch_pool = BasicConv2d(c_in, 192, 1, rngs=rngs)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d7 = self.branch7x7dbl_1(x)
    for layer in (
      self.branch7x7dbl_2,
      self.branch7x7dbl_3,
      self.branch7x7dbl_4,
      self.branch7x7dbl_5,
    ):
      d7 = layer(d7)
    pool = self.branch_pool(avg_pool_excluding_padding(x))
    return jnp.concatenate([self.branch1x1(x), b7, d7, pool], axis=-1)


class InceptionD(nnx.Module):
  """Reduction 17 -> 8: strided 3x3, 7x7 then strided 3x3, max pool."""

  def __init__(self, c_in: int, *, rngs):
    self.branch3x3_1 = BasicConv2d(c_in, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, **_ROW_7, rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, **_COLUMN_7, rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_1(x)
    for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = layer(b7)
    return jnp.concatenate([b3, b7, max_pool(x, stride=2)], axis=-1)


class FIDInceptionE(nnx.Module):
  """8x8 block with split 1x3 / 3x1 branches. `max_pool_branch`: the pool
  branch max-pools (pytorch-fid's FIDInceptionE_2, Mixed_7c) instead of
  averaging without the padding (FIDInceptionE_1, Mixed_7b)."""

  def __init__(self, c_in: int, *, max_pool_branch: bool, rngs):
    self.max_pool_branch = max_pool_branch
    row, col = _ROW_3, _COLUMN_3
    self.branch1x1 = BasicConv2d(c_in, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(c_in, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, **row, rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, **col, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, **row, rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, **col, rngs=rngs)
    self.branch_pool = BasicConv2d(c_in, 192, 1, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    b3 = [self.branch3x3_2a(b3), self.branch3x3_2b(b3)]
    d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    d3 = [self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3)]
    if self.max_pool_branch:
      pooled = max_pool(x, stride=1, padding=1)
    else:
      pooled = avg_pool_excluding_padding(x)
    return jnp.concatenate(
      [self.branch1x1(x), *b3, *d3, self.branch_pool(pooled)], axis=-1
    )


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] weights of PyTorch's 1-d linear interpolation with
  `align_corners=False` and no antialiasing (`F.interpolate(size=...)`):
  output i samples the input at max(0, (i + 0.5) size_in / size_out - 0.5),
  between its two nearest pixels (the last one clamped)."""
  scale = np.float32(size_in) / np.float32(size_out)
  out = np.arange(size_out, dtype=np.float32)
  source = np.maximum(scale * (out + np.float32(0.5)) - np.float32(0.5), 0)
  lower = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
  upper = np.minimum(lower + 1, size_in - 1)
  frac = (source - lower).astype(np.float32)
  weights = np.zeros((size_out, size_in), np.float32)
  np.add.at(weights, (np.arange(size_out), lower), 1 - frac)
  np.add.at(weights, (np.arange(size_out), upper), frac)
  return weights


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """[b, H, W, C] -> [b, height, width, C], PyTorch's bilinear resize
  (`align_corners=False`, no antialias) as two interpolation matrices."""
  rows = jnp.asarray(resize_matrix(x.shape[1], height))
  cols = jnp.asarray(resize_matrix(x.shape[2], width))
  x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=_HIGHEST)
  return jnp.einsum("pw,bowc->bopc", cols, x, precision=_HIGHEST)


def preprocess(pixels: jax.Array) -> jax.Array:
  """pixels [b, H, W, 1 or 3] in [0, 1] -> [b, 299, 299, 3] in [-1, 1]."""
  x = jnp.asarray(pixels, jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = resize_bilinear(x, INPUT_SIZE, INPUT_SIZE)
  return 2.0 * x - 1.0


class InceptionV3(nnx.Module):
  """pixels [b, H, W, 1 or 3] in [0, 1] -> pool features [b, 2048]."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = FIDInceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = FIDInceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = FIDInceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = FIDInceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = FIDInceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = FIDInceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = FIDInceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = FIDInceptionE(1280, max_pool_branch=False, rngs=rngs)
    self.Mixed_7c = FIDInceptionE(2048, max_pool_branch=True, rngs=rngs)

  def pool_features(self, x: jax.Array) -> jax.Array:
    """Preprocessed x [b, 299, 299, 3] in [-1, 1] -> [b, 2048]."""
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool(x, stride=2)
    x = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), stride=2)
    for block in (
      self.Mixed_5b,
      self.Mixed_5c,
      self.Mixed_5d,
      self.Mixed_6a,
      self.Mixed_6b,
      self.Mixed_6c,
      self.Mixed_6d,
      self.Mixed_6e,
      self.Mixed_7a,
      self.Mixed_7b,
      self.Mixed_7c,
    ):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, pixels: jax.Array) -> jax.Array:
    return self.pool_features(preprocess(pixels))
