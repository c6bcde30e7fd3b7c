"""Initialisers of the official ViT (trunc-normal 0.02, zeros for adaLN)."""

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import precision

TRUNC_NORMAL_002 = nnx.initializers.truncated_normal(stddev=0.02)
NORMAL_002 = nnx.initializers.normal(stddev=0.02)
ZEROS = nnx.initializers.zeros_init()
# DiT's `nn.init.xavier_uniform_` on a [in, out] Linear kernel (fused qkv
# included, so its fans are (width, 3 width) as in the reference).
XAVIER_UNIFORM = nnx.initializers.xavier_uniform()


class MixedLinear(nnx.Linear):
  """An `nnx.Linear` computed in a dtype below float32 (`dtype`): its three
  matmuls (forward, input gradient, weight gradient) run in `dtype` and
  accumulate in float32 (`precision.matmul`); it returns float32. The same
  parameters (kernel [in, out], bias [out]) as `nnx.Linear`."""

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """inputs: [..., in] -> [..., out] float32."""
    y = precision.matmul(inputs, self.kernel[...], self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y


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
) -> nnx.Linear:
  """A Linear with `kernel_init` weights (trunc-normal 0.02 by default, or
  zeros with `zero`) and zero bias, stored in `param_dtype` and computed in
  `dtype` (`nn.precision`). Below float32 it is a `MixedLinear`: all three
  of its matmuls run in `dtype` and accumulate in and return float32, which
  XLA:CPU also runs faster than a bfloat16 result; the next Linear casts its
  input again."""
  mixed = precision.below_float32(dtype)
  return (MixedLinear if mixed else nnx.Linear)(
    in_features,
    out_features,
    use_bias=use_bias,
    kernel_init=ZEROS if zero else kernel_init,
    bias_init=ZEROS,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )
