"""Rotary position embedding (RoPE; Su et al. 2021), shared by the Llama
layers (`nn.llama`) and `nn.attention.SelfAttention` (the token DiT's
`model.positions="rotary"`).

Rotating q and k by angles proportional to their positions makes the
attention score q_i . k_j depend on the positions through i - j only.
"""

import jax
import jax.numpy as jnp

# RoPE's base (Llama's, SEDD's and MDLM's).
DEFAULT_THETA = 10000.0


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (RoPE, rotate-half form).

  x: [batch, tokens, heads, head_dim]; positions: [tokens] or [batch,
  tokens] ints. Pairs (i, i + head_dim/2) rotate by positions x
  theta^(-2i/head_dim). The angles are float32; the result is x's dtype.
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
