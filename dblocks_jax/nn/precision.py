"""Mixed precision: the compute dtype and the parameter dtype of the layers.

Parameters are stored in `param_dtype`. Every Linear (`nn.init.linear`)
casts its input and its kernel to `dtype` (the compute dtype) for the
matmul; below float32 it accumulates in and returns float32, and its
backward products run in `dtype` (`nn.linear.matmul`). With float32
parameters and bfloat16 compute, the gradients and the optimizer state stay
float32. Embedding lookups are gathers, with no arithmetic to do in
`dtype`: they return their table's dtype, and the Linear they feed casts.

What stays float32 whatever `dtype` is (where the casts are):
  * norms (LayerNorm, RMSNorm): built with dtype=float32 (`layer_norm`,
    `rms_norm`), so statistics and output are float32 (`nn.layers`,
    `nn.llama`, the models' readouts);
  * the residual stream: a layer stack casts its input up with `residual`,
    so the sum of the layers' outputs is kept in float32;
  * attention: the einsum attention of ViT and DiT (`nn.attention`) takes
    the projections' float32 outputs and computes in float32; the
    dot-product kind gets q, k and v in `dtype` and takes the softmax in
    float32 itself; the Llama attention (`nn.llama`) computes its logits in
    float32 (`preferred_element_type`);
  * readout outputs: every readout (and baseline head) casts its logits, or
    the network output F, to float32 (`float32`), so the loss, the EDM
    preconditioning D = c_skip z + c_out F, the target tables and the
    samplers are float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import remat as remat_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str, argument: str = "dtype"):
  """ "bfloat16" -> jnp.bfloat16; an unknown name is a ValueError that names
  `argument`."""
  if name not in DTYPES:
    raise ValueError(
      f"{argument}={name!r} is unknown; choose one of {tuple(DTYPES)}."
    )
  return DTYPES[name]


def dtypes(dtype: str, param_dtype: str) -> dict:
  """{"dtype", "param_dtype"} as JAX dtypes, the layers' keyword arguments;
  an unknown name is a ValueError that names its argument."""
  return {
    "dtype": dtype_of(dtype, "dtype"),
    "param_dtype": dtype_of(param_dtype, "param_dtype"),
  }


def residual(x: jax.Array) -> jax.Array:
  """x cast up to at least float32: the residual stream's dtype."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def float32(x: jax.Array) -> jax.Array:
  """x as float32 (a readout's output, before the loss and EDM)."""
  return x.astype(jnp.float32)


def below_float32(dtype) -> bool:
  """Whether `dtype` computes with fewer bits than float32 (bfloat16)."""
  return jnp.finfo(dtype).bits < 32


def layer_norm(
  width: int,
  *,
  epsilon: float,
  affine: bool = True,
  param_dtype=jnp.float32,
  rngs: nnx.Rngs,
) -> nnx.LayerNorm:
  """LayerNorm over x: [..., width] with float32 statistics and output;
  with `affine` a learned scale and bias, stored in `param_dtype`."""
  return nnx.LayerNorm(
    width,
    epsilon=epsilon,
    use_bias=affine,
    use_scale=affine,
    dtype=jnp.float32,
    param_dtype=param_dtype,
    rngs=rngs,
  )


def rms_norm(
  width: int, *, epsilon: float, param_dtype=jnp.float32, rngs: nnx.Rngs
) -> nnx.RMSNorm:
  """RMSNorm over x: [..., width] with float32 statistics and output; its
  scale is stored in `param_dtype`."""
  return nnx.RMSNorm(
    width,
    epsilon=epsilon,
    dtype=jnp.float32,
    param_dtype=param_dtype,
    rngs=rngs,
  )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComputeSettings:
  """How the layers compute: the base of the models' frozen config
  dataclasses (`models.vit.ViTConfig`, `models.dit.DiTConfig`,
  `models.mdm.MDMConfig`, `models.ar.ARConfig`). The fields are keyword-only
  (a subclass's own fields keep their positions); after init, `remat` holds
  its policy name (`nn.remat.remat_name`) and the dtype names are checked.

  Attributes:
    remat: what each layer keeps for backward (`nn.remat`): "none",
      "full" or a `jax.checkpoint_policies` name (True/False: full/none).
    dtype: the compute dtype of the Linears, "float32" or "bfloat16".
    param_dtype: the dtype the parameters are stored in.
  """

  remat: str = "none"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "remat", remat_lib.remat_name(self.remat))
    self.dtypes()  # Checks the names.

  def dtypes(self) -> dict:
    """{"dtype", "param_dtype"} as JAX dtypes, the layers' arguments."""
    return dtypes(self.dtype, self.param_dtype)

  def compute_settings(self) -> dict:
    """{"remat", "dtype", "param_dtype"}: these fields, as keyword
    arguments of another config."""
    return {
      "remat": self.remat,
      "dtype": self.dtype,
      "param_dtype": self.param_dtype,
    }
