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

Attention paths (`attention_impl`, resolved by `resolve_attention`):
  dense    `jax.nn.dot_product_attention` with a dense [.., q, k] bool mask
           (XLA writes the scores out);
  chunked  `nn.chunked_attention.attention` with the mask's structure
           (`MaskSpec`): the scores are never written out, O(length) memory;
  auto     on GPU, cuDNN's fused attention (`implementation="cudnn"`) where
           the mask allows it (causal or bidirectional without padding, in
           bfloat16 or float16, head_dim a multiple of 8 up to 128), chunked
           otherwise; chunked on TPU and CPU.
A mask is a `MaskSpec` (the models' call sites) or a dense bool array (which
always takes the dense path). The chunked and cuDNN paths are `custom_vjp`s:
reverse mode only, so forward mode (`jax.jvp`, `jax.linearize`) needs
"dense".

The Linears compute in `dtype` (their weights stored in `param_dtype`); the
RMSNorms, the softmax (every path takes it in float32) and the residual
stream are float32 (`nn.precision`). Queries, keys and values (and so the
KV cache) are cast to `dtype` after the rotary embedding.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import chunked_attention, init, layers, precision
from dblocks_jax.nn import remat as remat_lib
from dblocks_jax.nn.chunked_attention import MaskSpec

KeyValue = tuple[jax.Array, jax.Array]
# (keys [b, slots, heads, head_dim], values, valid [b, slots] bool).
Prefix = tuple[jax.Array, jax.Array, jax.Array]

ATTENTION_IMPLS = ("dense", "chunked", "auto")
# What `resolve_attention` reads of a mask (`mask_kind`): a MaskSpec's kind,
# "general" for one with key_valid or a causal offset, "array" for a dense
# bool mask.
MASK_KINDS = ("bidirectional", "causal", "two_stream", "general", "array")
# cuDNN's fused attention: its dtypes and largest head_dim (a multiple of 8).
CUDNN_MAX_HEAD_DIM = 128


def mask_kind(mask) -> str:
  """The kind of `mask` (a `MaskSpec` or a dense bool array) as
  `resolve_attention` reads it (one of MASK_KINDS)."""
  if not isinstance(mask, MaskSpec):
    return "array"
  if mask.key_valid is not None:
    return "general"
  if mask.kind == "causal" and not (
    isinstance(mask.offset, int) and mask.offset == 0
  ):
    return "general"
  return mask.kind


def resolve_attention(
  impl: str, platform: str, mask_kind: str, *, dtype, head_dim: int
) -> str:
  """The attention path, "dense", "chunked" or "cudnn", of `impl` (one of
  ATTENTION_IMPLS) on `platform` ("cpu", "gpu", "tpu": a
  `jax.default_backend()`) for a mask of `mask_kind` (MASK_KINDS), queries
  of `dtype` and `head_dim` (see the module docstring). A dense mask array
  always takes the dense path."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(
      f"attention_impl={impl!r} is unknown; choose one of {ATTENTION_IMPLS}."
    )
  if mask_kind not in MASK_KINDS:
    raise ValueError(f"mask_kind={mask_kind!r} is unknown; see {MASK_KINDS}.")
  if impl == "dense" or mask_kind == "array":
    return "dense"
  cudnn = (
    impl == "auto"
    and platform == "gpu"
    and mask_kind in ("causal", "bidirectional")
    and precision.below_float32(jnp.dtype(dtype))
    and head_dim % 8 == 0
    and head_dim <= CUDNN_MAX_HEAD_DIM
  )
  return "cudnn" if cudnn else "chunked"


def describe_attention(
  impl: str, platform: str, mask_kinds, *, dtype, head_dim: int
) -> str:
  """One line for the log and reports: the path of each mask kind a model
  runs (`resolve_attention`), e.g. "chunked (auto on cpu)" or "cudnn for
  causal, chunked for two_stream (auto on gpu)"."""
  paths = {
    kind: resolve_attention(
      impl, platform, kind, dtype=dtype, head_dim=head_dim
    )
    for kind in mask_kinds
  }
  if len(set(paths.values())) == 1:
    text = next(iter(paths.values()))
  else:
    text = ", ".join(f"{path} for {kind}" for kind, path in paths.items())
  how = f"auto on {platform}" if impl == "auto" else f"{impl} as set"
  return f"{text} ({how})"


def attend(q, k, v, mask, path: str) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim), masked) v on `path` (`resolve_attention`).

  q: [batch, q_len, heads, head_dim]; k, v: [batch, k_len, heads,
  head_dim]; mask: a `MaskSpec`, or a [batch or 1, 1, q_len, k_len] bool
  array (True = attend; dense path only) -> [batch, q_len, heads,
  head_dim] in q's dtype.
  """
  if path == "chunked":
    return chunked_attention.attention(q, k, v, mask=mask)
  if path == "cudnn":
    return jax.nn.dot_product_attention(
      q, k, v, is_causal=mask.kind == "causal", implementation="cudnn"
    )
  if isinstance(mask, MaskSpec):
    mask = mask.dense(q.shape[1], k.shape[1])
  return jax.nn.dot_product_attention(q, k, v, mask=mask)


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
  a `MaskSpec` or a [batch or 1, 1, tokens, tokens] bool array (True =
  attend) -> ([batch, tokens, width], (keys, values) of x).

  `attention_impl` ("dense", "chunked" or "auto"; the module docstring)
  picks the path; "auto" is resolved for the platform the module is built
  on (`resolve_attention`), per mask kind. The chunked and cuDNN paths have
  reverse-mode derivatives only: forward mode (`jax.jvp`, `jax.linearize`)
  needs attention_impl="dense". With a `prefix` (decoding one or a few
  tokens against a cache) attention is always dense: its mask is the
  cache's validity beside `mask`, and its scores are O(tokens x cache).
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    theta: float,
    attention_impl: str = "dense",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by {num_heads} heads")
    self.platform = jax.default_backend()
    resolve_attention(  # Checks the name.
      attention_impl,
      self.platform,
      "causal",
      dtype=dtype,
      head_dim=width // num_heads,
    )
    self.attention_impl = attention_impl
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
    if prefix is None:
      path = resolve_attention(
        self.attention_impl,
        self.platform,
        mask_kind(mask),
        dtype=q.dtype,
        head_dim=head_dim,
      )
      y = attend(q, k, v, mask, path)
    else:
      y = _attend_with_prefix(q, k, v, mask, prefix)
    return self.out(y.reshape(batch, tokens, width)), (k, v)


def _attend_with_prefix(q, k, v, mask, prefix: Prefix) -> jax.Array:
  """Dense attention of q [b, t, heads, head_dim] to the valid cached slots
  of `prefix` and to k, v (under `mask`, a `MaskSpec` or [b or 1, 1, t, t]
  bool) -> [b, t, heads, head_dim]."""
  batch, tokens = q.shape[:2]
  if isinstance(mask, MaskSpec):
    mask = mask.dense(tokens, tokens)
  cached_k, cached_v, valid = prefix
  keys = jnp.concatenate([cached_k, k], axis=1)
  values = jnp.concatenate([cached_v, v], axis=1)
  valid = jnp.broadcast_to(
    valid[:, None, None], (batch, 1, tokens, valid.shape[-1])
  )
  mask = jnp.broadcast_to(mask, (batch, 1, tokens, tokens))
  mask = jnp.concatenate([valid, mask], axis=-1)
  return jax.nn.dot_product_attention(q, keys, values, mask=mask)


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
    attention_impl: str = "dense",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm = dict(epsilon=norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = precision.rms_norm(width, **norm)
    self.attention = Attention(
      width, num_heads, theta=rope_theta, attention_impl=attention_impl, **kw
    )
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
  pass casts x up to the float32 residual stream first. `mask` is a
  `MaskSpec` (or a dense bool array, `Attention`); `attention_impl` (in
  `layer_kw`) picks each layer's attention path.
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
    self_mask = MaskSpec.causal()  # The token sees itself.
    x = precision.residual(x)
    kvs = []
    for layer, prefix in zip(self.layers, prefixes, strict=True):
      x, kv = layer(x, cond, positions, self_mask, prefix)
      kvs.append(kv)
    return x, kvs
