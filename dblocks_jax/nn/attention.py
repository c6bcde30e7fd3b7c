"""Multi-head self-attention and the transformer MLP."""

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import init


class SelfAttention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection (qkv bias on).

  x: [batch, tokens, width] -> [batch, tokens, width].
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    attention_dropout: float,
    dropout: float,
    rngs: nnx.Rngs,
  ):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by {num_heads} heads")
    self.num_heads = num_heads
    self.qkv = init.linear(width, 3 * width, rngs=rngs)
    self.out = init.linear(width, width, rngs=rngs)
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
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = self.attention_dropout(probs, rngs=rngs, deterministic=rngs is None)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, tokens, width)
    return self.dropout(self.out(y), rngs=rngs, deterministic=rngs is None)


class Mlp(nnx.Module):
  """Linear -> GELU (exact) -> Linear -> dropout. [..., width] -> same."""

  def __init__(self, width: int, hidden: int, *, dropout: float, rngs):
    self.fc1 = init.linear(width, hidden, rngs=rngs)
    self.fc2 = init.linear(hidden, width, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, *, rngs=None) -> jax.Array:
    h = jax.nn.gelu(self.fc1(x), approximate=False)
    return self.dropout(self.fc2(h), rngs=rngs, deterministic=rngs is None)
