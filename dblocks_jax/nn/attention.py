"""Multi-head self-attention and the transformer MLP, and the attention
paths every model shares.

Attention paths (`attention_impl`, resolved by `resolve_attention`):
  dense    the scores written out: the Llama layers' dense-mask
           `jax.nn.dot_product_attention`, `SelfAttention`'s einsum or
           dot-product kind (XLA keeps the [.., q, k] scores);
  chunked  `nn.chunked_attention.attention` with the mask's structure
           (`MaskSpec`): the scores are never written out, O(length) memory;
  auto     on GPU, cuDNN's fused attention (`implementation="cudnn"`) where
           the mask allows it (causal or bidirectional without padding, in
           bfloat16 or float16, head_dim a multiple of 8 up to 128), chunked
           otherwise; chunked on TPU and CPU.
Dropout on the attention weights (`attention_dropout` > 0) exists on the
dense path only: "auto" then resolves to dense and "chunked" is an error.
A mask is a `MaskSpec` or a dense bool array (which always takes the dense
path). The chunked and cuDNN paths are `custom_vjp`s: reverse mode only, so
forward mode (`jax.jvp`, `jax.linearize`) needs "dense". The Llama layers
(`nn.llama`) and `SelfAttention` (ViT, DiT, the masked-diffusion LM) read
the same resolver, so one `model.attention_impl` means the same everywhere.

Positions: `SelfAttention(rope_theta=...)` rotates q and k by their token
index (`nn.rope.rotary`, the Llama layers' RoPE) before any path; None (the
default) leaves them as they are (the models' absolute position
embeddings).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import chunked_attention, init, precision, rope
from dblocks_jax.nn.activations import gelu
from dblocks_jax.nn.chunked_attention import MaskSpec

# The dense path's two forms in `SelfAttention` (the same function).
ATTENTION_KINDS = ("einsum", "dot_product")
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


def check_attention_impl(impl: str, attention_dropout: float = 0.0) -> None:
  """ValueError unless `impl` is one of ATTENTION_IMPLS and can run with
  dropout `attention_dropout` on the attention weights (the chunked path
  has none)."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(
      f"attention_impl={impl!r} is unknown; choose one of {ATTENTION_IMPLS}."
    )
  if impl == "chunked" and attention_dropout:
    raise ValueError(
      f"attention_impl='chunked' has no dropout on the attention weights"
      f" but attention_dropout={attention_dropout}; set attention_dropout=0"
      " or attention_impl='dense' (or 'auto', which then takes dense)."
    )


def resolve_attention(
  impl: str,
  platform: str,
  mask_kind: str,
  *,
  dtype,
  head_dim: int,
  attention_dropout: float = 0.0,
) -> str:
  """The attention path, "dense", "chunked" or "cudnn", of `impl` (one of
  ATTENTION_IMPLS) on `platform` ("cpu", "gpu", "tpu": a
  `jax.default_backend()`) for a mask of `mask_kind` (MASK_KINDS), queries
  of `dtype` and `head_dim` (see the module docstring). A dense mask array,
  and attention dropout, always take the dense path ("chunked" with
  dropout is a ValueError, `check_attention_impl`)."""
  check_attention_impl(impl, attention_dropout)
  if mask_kind not in MASK_KINDS:
    raise ValueError(f"mask_kind={mask_kind!r} is unknown; see {MASK_KINDS}.")
  if impl == "dense" or mask_kind == "array" or attention_dropout:
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
  impl: str,
  platform: str,
  mask_kinds,
  *,
  dtype,
  head_dim: int,
  attention_dropout: float = 0.0,
) -> str:
  """One line for the log and reports: the path of each mask kind a model
  runs (`resolve_attention`), e.g. "chunked (auto on cpu)", "cudnn for
  causal, chunked for two_stream (auto on gpu)" or "dense (auto on gpu,
  attention dropout)"."""
  paths = {
    kind: resolve_attention(
      impl,
      platform,
      kind,
      dtype=dtype,
      head_dim=head_dim,
      attention_dropout=attention_dropout,
    )
    for kind in mask_kinds
  }
  if len(set(paths.values())) == 1:
    text = next(iter(paths.values()))
  else:
    text = ", ".join(f"{path} for {kind}" for kind, path in paths.items())
  how = f"auto on {platform}" if impl == "auto" else f"{impl} as set"
  if impl == "auto" and attention_dropout:
    how += ", attention dropout"
  return f"{text} ({how})"


def describe_model_attention(spec, mask_kinds) -> str:
  """`describe_attention` of a model config on this platform: `spec` has
  `attention_impl`, `width`, `num_heads`, `dtypes()` and, where the model
  has it, `attention_dropout`."""
  return describe_attention(
    spec.attention_impl,
    jax.default_backend(),
    mask_kinds,
    dtype=spec.dtypes()["dtype"],
    head_dim=spec.width // spec.num_heads,
    attention_dropout=getattr(spec, "attention_dropout", 0.0),
  )


def attend(q, k, v, mask, path: str) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim), masked) v on `path` (`resolve_attention`).

  q: [batch, q_len, heads, head_dim]; k, v: [batch, k_len, heads,
  head_dim]; mask: a `MaskSpec`, or a [batch or 1, 1, q_len, k_len] bool
  array (True = attend; dense path only) -> [batch, q_len, heads,
  head_dim] in q's dtype. The dense path is `jax.nn.dot_product_attention`
  with the dense mask.
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


class SelfAttention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection (qkv bias on).

  `attention_impl` picks the path (the module docstring; resolved for the
  platform the module is built on, per mask kind). On the dense path
  `kind="einsum"` writes softmax(q k^T / sqrt(d)) v out (and applies
  attention dropout to the probabilities, as the official ViT does);
  `kind="dot_product"` calls `jax.nn.dot_product_attention`, which XLA and
  cuDNN fuse, and has no attention dropout. Both compute the same function,
  and so do the chunked and cuDNN paths (to float rounding).
  The projections compute in `dtype`; every path takes the softmax in
  float32 (`nn.precision`). Below float32 the projections return float32
  (`nn.init.linear`): the einsum kind computes attention in float32 (XLA:CPU
  cannot run every batched bfloat16 product that accumulates in float32),
  and the dot-product kind and the chunked and cuDNN paths get q, k and v
  in `dtype`, for cuDNN's fused attention.
  With `rope_theta` (RoPE's base), q and k are rotated by their token index
  0..tokens-1 (`nn.rope.rotary`, in float32) on every path; None: no
  rotation (the default).

  x: [batch, tokens, width] -> [batch, tokens, width].
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    attention_dropout: float,
    dropout: float,
    kernel_init=init.TRUNC_NORMAL_002,
    kind: str = "einsum",
    attention_impl: str = "dense",
    rope_theta: float | None = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by {num_heads} heads")
    if kind not in ATTENTION_KINDS:
      raise ValueError(
        f"attention kind={kind!r} is unknown; choose one of {ATTENTION_KINDS}."
      )
    if kind == "dot_product" and attention_dropout:
      raise ValueError(
        f"attention_dropout={attention_dropout} needs kind='einsum';"
        " jax.nn.dot_product_attention has no dropout."
      )
    check_attention_impl(attention_impl, attention_dropout)
    self.platform = jax.default_backend()
    self.attention_impl = attention_impl
    self.num_heads = num_heads
    self.rope_theta = rope_theta
    self.kind = kind
    self.dtype = dtype
    kw = dict(
      kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.qkv = init.linear(width, 3 * width, **kw)
    self.out = init.linear(width, width, **kw)
    self.attention_dropout = nnx.Dropout(attention_dropout)
    self.dropout = nnx.Dropout(dropout)

  def path(self, mask, head_dim: int) -> str:
    """The path of a call with `mask` (None: every token sees every token)
    on this platform: "dense", "chunked" or "cudnn"."""
    return resolve_attention(
      self.attention_impl,
      self.platform,
      mask_kind(MaskSpec.bidirectional() if mask is None else mask),
      dtype=self.dtype,
      head_dim=head_dim,
      attention_dropout=self.attention_dropout.rate,
    )

  def __call__(self, x: jax.Array, *, mask=None, rngs=None) -> jax.Array:
    """mask: None (every token sees every token), a `MaskSpec`, or a
    [batch or 1, 1 or heads, tokens, tokens] bool array (True = keep; the
    dense path)."""
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = jnp.moveaxis(qkv, 2, 0)  # each [batch, tokens, heads, head_dim]
    if self.rope_theta is not None:
      q, k = (
        rope.rotary(t, jnp.arange(tokens), self.rope_theta) for t in (q, k)
      )
    path = self.path(mask, head_dim)
    if path != "dense":
      if precision.below_float32(self.dtype):
        q, k, v = (t.astype(self.dtype) for t in (q, k, v))
      spec = MaskSpec.bidirectional() if mask is None else mask
      y = attend(q, k, v, spec, path).reshape(batch, tokens, width)
      return self.dropout(self.out(y), rngs=rngs, deterministic=rngs is None)
    if isinstance(mask, MaskSpec):
      mask = mask.dense(tokens, tokens)
    if self.kind == "dot_product":
      if precision.below_float32(self.dtype):
        q, k, v = (t.astype(self.dtype) for t in (q, k, v))
      y = jax.nn.dot_product_attention(q, k, v, mask=mask)
      y = y.reshape(batch, tokens, width)
      return self.dropout(self.out(y), rngs=rngs, deterministic=rngs is None)
    logits = jnp.einsum(
      "bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32
    ) / jnp.sqrt(head_dim)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1)  # float32
    probs = self.attention_dropout(probs, rngs=rngs, deterministic=rngs is None)
    probs = probs.astype(v.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, tokens, width)
    return self.dropout(self.out(y), rngs=rngs, deterministic=rngs is None)


class Mlp(nnx.Module):
  """Linear -> GELU -> Linear -> dropout. [..., width] -> same.

  GELU is exact (ViT) or the tanh approximation (DiT) with `gelu_approximate`
  (`activations.gelu`: its backward pass keeps only its input).
  """

  def __init__(
    self,
    width: int,
    hidden: int,
    *,
    dropout: float,
    gelu_approximate: bool = False,
    kernel_init=init.TRUNC_NORMAL_002,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    kw = dict(
      kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.fc1 = init.linear(width, hidden, **kw)
    self.fc2 = init.linear(hidden, width, **kw)
    self.dropout = nnx.Dropout(dropout)
    self.gelu_approximate = gelu_approximate

  def __call__(self, x: jax.Array, *, rngs=None) -> jax.Array:
    h = gelu(self.fc1(x), self.gelu_approximate)
    return self.dropout(self.fc2(h), rngs=rngs, deterministic=rngs is None)
