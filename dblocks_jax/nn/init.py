"""Initialisers of the official ViT (trunc-normal 0.02, zeros for adaLN)."""

from flax import nnx

TRUNC_NORMAL_002 = nnx.initializers.truncated_normal(stddev=0.02)
NORMAL_002 = nnx.initializers.normal(stddev=0.02)
ZEROS = nnx.initializers.zeros_init()


def linear(
  in_features: int,
  out_features: int,
  *,
  rngs: nnx.Rngs,
  zero=False,
  use_bias=True,
) -> nnx.Linear:
  """A Linear with trunc-normal(0.02) weights (or zeros) and zero bias."""
  return nnx.Linear(
    in_features,
    out_features,
    use_bias=use_bias,
    kernel_init=ZEROS if zero else TRUNC_NORMAL_002,
    bias_init=ZEROS,
    rngs=rngs,
  )
