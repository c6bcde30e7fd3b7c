"""Llama-style layers: RMSNorm, rotary positions, SwiGLU, no biases, with
optional per-token AdaLN-Zero conditioning and a key/value cache.

A layer maps x [batch, tokens, width] (and cond [batch, tokens, cond_dim]
when conditioned) to the same shape and also returns its keys and values
[batch, tokens, heads, head_dim], so that a generator can keep them. Given
a `prefix` (cached keys, values and a validity mask over the cache's
slots), every query also attends to the valid cached slots: decoding one
token then costs O(cache length), not a pass over the whole sequence.

Conditioned (DiT's AdaLN-Zero, with a modulation per token):
  shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(cond))
  x = x + gate1 * Attn(RMSNorm(x) * (1 + scale1) + shift1)
  x = x + gate2 * SwiGLU(RMSNorm(x) * (1 + scale2) + shift2)
Unconditioned: the same without modulation and gates (Llama-2's layer).

The Linears compute in `dtype` (their weights stored in `param_dtype`); the
RMSNorms, the softmax (`jax.nn.dot_product_attention` takes it in float32)
and the residual stream are float32 (`nn.precision`). Queries, keys and
values (and so the KV cache) are cast to `dtype` after the rotary
embedding.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import init, layers, precision
from dblocks_jax.nn import remat as remat_lib

KeyValue = tuple[jax.Array, jax.Array]
# (keys [b, slots, heads, head_dim], values, valid [b, slots] bool).
Prefix = tuple[jax.Array, jax.Array, jax.Array]


def linear(
  in_features: int,
  out_features: int,
  *,
  dtype=jnp.float32,
  param_dtype=jnp.float32,
  rngs: nnx.Rngs,
):
  """Llama's Linear (`nn.init.linear`): no bias, N(0, 0.02) weights.

  x: [..., in_features] -> [..., out_features] float32."""
  return init.linear(
    in_features,
    out_features,
    use_bias=False,
    kernel_init=init.NORMAL_002,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (RoPE, rotate-half form).

  x: [batch, tokens, heads, head_dim]; positions: [tokens] or [batch,
  tokens] ints. Pairs (i, i + head_dim/2) rotate by positions x
  theta^(-2i/head_dim).
  """
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs
  if angles.ndim == 2:
    angles = angles[None]
  cos = jnp.cos(angles)[:, :, None]
  sin = jnp.sin(angles)[:, :, None]
  first, second = x[..., :half], x[..., half:]
  return jnp.concatenate(
    [first * cos - second * sin, second * cos + first * sin], axis=-1
  ).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head attention with RoPE and no biases.

  x: [batch, tokens, width], positions: [tokens] or [batch, tokens], mask:
  [batch or 1, 1, tokens, tokens] bool (True = attend) -> ([batch, tokens,
  width], (keys, values) of x).
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    theta: float,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by {num_heads} heads")
    self.num_heads, self.theta, self.dtype = num_heads, theta, dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = linear(width, 3 * width, **kw)
    self.out = linear(width, width, **kw)

  def __call__(self, x, positions, mask, *, prefix: Prefix | None = None):
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = jnp.moveaxis(qkv, 2, 0)
    q = rotary(q, positions, self.theta)
    k = rotary(k, positions, self.theta)
    if precision.below_float32(self.dtype):
      q, k, v = (t.astype(self.dtype) for t in (q, k, v))
    keys, values = k, v
    if prefix is not None:
      cached_k, cached_v, valid = prefix
      keys = jnp.concatenate([cached_k, k], axis=1)
      values = jnp.concatenate([cached_v, v], axis=1)
      valid = jnp.broadcast_to(
        valid[:, None, None], (batch, 1, tokens, valid.shape[-1])
      )
      mask = jnp.broadcast_to(mask, (batch, 1, tokens, tokens))
      mask = jnp.concatenate([valid, mask], axis=-1)
    y = jax.nn.dot_product_attention(q, keys, values, mask=mask)
    return self.out(y.reshape(batch, tokens, width)), (k, v)


class SwiGLU(nnx.Module):
  """x -> down(silu(gate(x)) * up(x)), no biases. [..., width] -> same."""

  def __init__(
    self,
    width: int,
    hidden: int,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = linear(width, hidden, **kw)
    self.up = linear(width, hidden, **kw)
    self.down = linear(hidden, width, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class LlamaLayer(nnx.Module):
  """One pre-norm Llama layer; AdaLN-Zero conditioned with `cond_dim`
  (see the module docstring)."""

  def __init__(
    self,
    width: int,
    num_heads: int,
    mlp_dim: int,
    *,
    cond_dim: int | None = None,
    norm_eps: float = 1e-6,
    rope_theta: float = 10000.0,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm = dict(epsilon=norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = precision.rms_norm(width, **norm)
    self.attention = Attention(width, num_heads, theta=rope_theta, **kw)
    self.norm2 = precision.rms_norm(width, **norm)
    self.mlp = SwiGLU(width, mlp_dim, **kw)
    self.adaln = (
      init.linear(cond_dim, 6 * width, zero=True, **kw)
      if cond_dim is not None
      else None
    )

  def __call__(self, x, cond, positions, mask, prefix=None):
    """x: [b, t, width]; cond: [b, t, cond_dim] or None -> (x, (k, v))."""
    if self.adaln is None:
      y, kv = self.attention(self.norm1(x), positions, mask, prefix=prefix)
      x = x + y
      return x + self.mlp(self.norm2(x)), kv
    modulation = self.adaln(jax.nn.silu(cond))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(modulation, 6, -1)
    h = self.norm1(x) * (1 + scale1) + shift1
    y, kv = self.attention(h, positions, mask, prefix=prefix)
    x = x + gate1 * y
    h = self.norm2(x) * (1 + scale2) + shift2
    return x + gate2 * self.mlp(h), kv


class LlamaStack(layers.Stack):
  """A contiguous group of Llama layers: one DiffusionBlocks block, or a
  whole baseline network.

  `__call__` is the training pass; `prefill` also returns every layer's keys
  and values; `decode` runs new tokens against a cache (one `Prefix` per
  layer). `remat` names what `__call__` keeps of each layer for backward
  (`nn.remat`: "none", "full" or a `jax.checkpoint_policies` name). Each
  pass casts x up to the float32 residual stream first.
  """

  def __init__(
    self, num_layers: int, *, remat: str | bool = "none", rngs, **layer_kw
  ):
    stack = [LlamaLayer(rngs=rngs, **layer_kw) for _ in range(num_layers)]
    super().__init__(stack, remat=remat)

  def __call__(self, x, cond=None, *, positions, mask):
    """x: [b, t, width] -> [b, t, width]."""
    x = precision.residual(x)
    call = remat_lib.checkpointed(
      lambda layer, x: layer(x, cond, positions, mask)[0], self.remat
    )
    for layer in self.layers:
      x = call(layer, x)
    return x

  def prefill(self, x, cond=None, *, positions, mask):
    """-> (x, [(keys, values) per layer]), each [b, t, heads, head_dim]."""
    x = precision.residual(x)
    kvs = []
    for layer in self.layers:
      x, kv = layer(x, cond, positions, mask)
      kvs.append(kv)
    return x, kvs

  def decode(self, x, cond, *, positions, prefixes: list[Prefix]):
    """x: [b, 1, width], one new token that attends to itself and to the
    valid slots of `prefixes` -> (x, [(keys, values) of x per layer])."""
    if x.shape[1] != 1:
      raise ValueError(f"decode takes one token at a time, got {x.shape[1]}.")
    self_mask = jnp.ones((1, 1, 1, 1), bool)
    x = precision.residual(x)
    kvs = []
    for layer, prefix in zip(self.layers, prefixes, strict=True):
      x, kv = layer(x, cond, positions, self_mask, prefix)
      kvs.append(kv)
    return x, kvs
