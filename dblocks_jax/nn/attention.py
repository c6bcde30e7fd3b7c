"""Multi-head self-attention and the transformer MLP."""

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import init, precision
from dblocks_jax.nn.activations import gelu

ATTENTION_KINDS = ("einsum", "dot_product")


class SelfAttention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection (qkv bias on).

  `kind="einsum"` writes softmax(q k^T / sqrt(d)) v out (and applies
  attention dropout to the probabilities, as the official ViT does);
  `kind="dot_product"` calls `jax.nn.dot_product_attention`, which XLA and
  cuDNN fuse, and has no attention dropout. Both compute the same function.
  The projections compute in `dtype`; both kinds take the softmax in
  float32 (`nn.precision`). Below float32 the projections return float32
  (`nn.init.linear`): the einsum kind computes attention in float32 (XLA:CPU
  cannot run every batched bfloat16 product that accumulates in float32),
  and the dot-product kind gets q, k and v in `dtype`, for cuDNN's fused
  attention.

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
    self.num_heads = num_heads
    self.kind = kind
    self.dtype = dtype
    kw = dict(
      kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.qkv = init.linear(width, 3 * width, **kw)
    self.out = init.linear(width, width, **kw)
    self.attention_dropout = nnx.Dropout(attention_dropout)
    self.dropout = nnx.Dropout(dropout)

  def __call__(
    self, x: jax.Array, *, mask: jax.Array | None = None, rngs=None
  ) -> jax.Array:
    """mask: optional [batch or 1, 1 or heads, tokens, tokens], True = keep."""
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = jnp.moveaxis(qkv, 2, 0)  # each [batch, tokens, heads, head_dim]
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
