"""Mixed precision: the compute dtype and the parameter dtype of the layers.

Parameters are stored in `param_dtype`. Every Linear (`nn.init.linear`)
casts its input and its kernel to `dtype` (the compute dtype) for the
matmul; below float32 it accumulates in and returns float32, and its
backward pass runs in `dtype` the same way (`matmul`). With float32
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

import functools

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  """x @ kernel with both operands cast to `dtype`, accumulated in and
  returned as float32, and the same in the backward pass.

  Differentiating `dot_general(..., preferred_element_type=float32)` gives a
  float32 cotangent, which JAX contracts with the other (`dtype`) operand in
  float32: two of a training step's three matmuls would not run in `dtype`.
  Here the cotangent is cast to `dtype` first (what mixed-precision training
  does), and the kernel's gradient is accumulated in float32 and returned
  in the kernel's dtype, without a round trip through `dtype`.

  Args:
    x: [..., in] any float dtype.
    kernel: [in, out] any float dtype.
    dtype: the compute dtype (bfloat16).

  Returns:
    [..., out] float32.
  """
  return _contract_last(x.astype(dtype), kernel.astype(dtype))


def _contract_last(x, kernel):
  """x: [..., in] @ kernel: [in, out] -> float32 [..., out]."""
  return jax.lax.dot_general(
    x,
    kernel,
    (((x.ndim - 1,), (0,)), ((), ())),
    preferred_element_type=jnp.float32,
  )


def _matmul_forward(x, kernel, dtype):
  x_c, kernel_c = x.astype(dtype), kernel.astype(dtype)
  # Empty arrays carry the operands' dtypes to the backward pass.
  dtypes_ = (jnp.empty((0,), x.dtype), jnp.empty((0,), kernel.dtype))
  return _contract_last(x_c, kernel_c), (x_c, kernel_c, dtypes_)


def _matmul_backward(dtype, residuals, g):
  x_c, kernel_c, (x_dtype, kernel_dtype) = residuals
  g_c = g.astype(dtype)  # [..., out]
  dx = jax.lax.dot_general(  # [..., in]
    g_c,
    kernel_c,
    (((g_c.ndim - 1,), (1,)), ((), ())),
    preferred_element_type=jnp.float32,
  )
  leading = tuple(range(x_c.ndim - 1))
  dkernel = jax.lax.dot_general(  # [in, out]: sums over the leading axes.
    x_c, g_c, ((leading, leading), ((), ())), preferred_element_type=jnp.float32
  )
  return dx.astype(x_dtype.dtype), dkernel.astype(kernel_dtype.dtype)


matmul.defvjp(_matmul_forward, _matmul_backward)


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
