"""Initialisers of the official ViT (trunc-normal 0.02, zeros for adaLN)."""

import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import linear as linear_lib

TRUNC_NORMAL_002 = nnx.initializers.truncated_normal(stddev=0.02)
NORMAL_002 = nnx.initializers.normal(stddev=0.02)
ZEROS = nnx.initializers.zeros_init()
# DiT's `nn.init.xavier_uniform_` on a [in, out] Linear kernel (fused qkv
# included, so its fans are (width, 3 width) as in the reference).
XAVIER_UNIFORM = nnx.initializers.xavier_uniform()


def linear(
  in_features: int,
  out_features: int,
  *,
  rngs: nnx.Rngs,
  zero=False,
  use_bias=True,
  kernel_init=TRUNC_NORMAL_002,
  dtype=jnp.float32,
  param_dtype=jnp.float32,
) -> linear_lib.Linear:
  """A Linear with `kernel_init` weights (trunc-normal 0.02 by default, or
  zeros with `zero`) and zero bias, stored in `param_dtype` and computed in
  `dtype` (`nn.precision`): an `nn.linear.Linear`, whose three matmuls run
  in `dtype` and accumulate in and return float32 (which XLA:CPU also runs
  faster than a bfloat16 result); the next Linear casts its input again."""
  return linear_lib.Linear(
    in_features,
    out_features,
    use_bias=use_bias,
    kernel_init=ZEROS if zero else kernel_init,
    bias_init=ZEROS,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )
