"""Initialisers of the official ViT (trunc-normal 0.02, zeros for adaLN)."""

from flax import nnx

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
) -> nnx.Linear:
  """A Linear with `kernel_init` weights (trunc-normal 0.02 by default, or
  zeros with `zero`) and zero bias."""
  return nnx.Linear(
    in_features,
    out_features,
    use_bias=use_bias,
    kernel_init=ZEROS if zero else kernel_init,
    bias_init=ZEROS,
    rngs=rngs,
  )
