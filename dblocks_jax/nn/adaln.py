"""AdaLN-Zero modulation from a noise-level embedding."""

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import init

MODULATIONS = ("official", "dit")


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x * (1 + scale) + shift, with [batch, width] shift/scale broadcast over
  the token axis of x: [batch, tokens, width] (or x: [batch, width])."""
  if x.ndim == 3:
    shift, scale = shift[:, None], scale[:, None]
  return x * (1 + scale) + shift


class AdaLNModulation(nnx.Module):
  """cond: [batch, cond_dim] -> `num_chunks` tensors of [batch, width].

  The Linear is zero-initialised, so a fresh layer is the identity. Both modes
  apply SiLU to the embedding before the Linear (DiT's form). The "official"
  mode also applies SiLU after it, as the official ViT code does (its
  conditioning vector is SiLU(MLP(...)) and each adaLN is SiLU(Linear(.))):
  modulations are then bounded below by -0.28. "dit" drops that second SiLU.
  The Linear computes in `dtype`; its weights are stored in `param_dtype`.
  """

  def __init__(
    self,
    cond_dim: int,
    width: int,
    num_chunks: int,
    *,
    mode: str = "official",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if mode not in MODULATIONS:
      raise ValueError(f"modulation {mode!r} not in {MODULATIONS}")
    self.num_chunks = num_chunks
    self.silu_after = mode == "official"
    self.linear = init.linear(
      cond_dim,
      num_chunks * width,
      zero=True,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  def __call__(self, cond: jax.Array) -> list[jax.Array]:
    out = self.linear(jax.nn.silu(cond))
    if self.silu_after:
      out = jax.nn.silu(out)
    return list(jax.numpy.split(out, self.num_chunks, axis=-1))
