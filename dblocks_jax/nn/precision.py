"""Mixed precision: the compute dtype and the parameter dtype of the layers.

Parameters are stored in `param_dtype`. Every Linear (`nn.init.linear`)
casts its input and its kernel to `dtype` (the compute dtype) for the
matmul; below float32 it accumulates in and returns float32, and its
backward products run in `dtype` (`nn.linear.matmul`). With float32
parameters and bfloat16 compute, the gradients and the optimizer state stay
float32. Embedding lookups are gathers, with no arithmetic to do in
`dtype`: they return their table's dtype, and the Linear they feed casts.

What stays float32 whatever `dtype` is (where the casts are):
  * norms (LayerNorm, RMSNorm): built with dtype=float32, so statistics and
    output are float32 (`nn.layers`, `nn.llama`, the models' readouts);
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

import jax
import jax.numpy as jnp

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


class ComputeSettings:
  """Base of the models' frozen config dataclasses, which have `remat`,
  `dtype` and `param_dtype` fields: after init, `remat` holds its policy
  name (`nn.remat.remat_name`) and the dtype names are checked."""

  def __post_init__(self):
    object.__setattr__(self, "remat", remat_lib.remat_name(self.remat))
    self.dtypes()  # Checks the names.

  def dtypes(self) -> dict:
    """{"dtype", "param_dtype"} as JAX dtypes, the layers' arguments."""
    return dtypes(self.dtype, self.param_dtype)
