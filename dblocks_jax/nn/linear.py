"""The Linear layer of every model: a matmul whose backward pass is ours.

`matmul` is x @ kernel with both operands cast to the compute dtype,
accumulated in and returned as float32 (below float32, XLA:CPU also runs
that faster than a bf16 result), with a custom VJP:

* it spells out the backward pass of the mixed-precision matmul: the
  cotangent is cast to the compute dtype, and the two products run in it
  and return it, as JAX's own transposition does;
* JAX computes the kernel's gradient as (g^T x)^T, and XLA:CPU transposes
  the left operand of a contraction over its leading axes: for a widening
  layer (an MLP's first) that is the [tokens, 4 width] cotangent. Here the
  narrower of x and g goes on the left.

In float32 the forward pass is `nnx.Linear`'s, and the gradients are the
same products (summed in another order).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  """x @ kernel, both cast to `dtype`, accumulated in float32.

  Args:
    x: [..., in] any float dtype.
    kernel: [in, out] any float dtype.
    dtype: the compute dtype (float32 or bfloat16).

  Returns:
    [..., out] float32. The gradients come back in x's and kernel's dtypes
    (products in `dtype`).
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
  dtypes = (jnp.empty((0,), x.dtype), jnp.empty((0,), kernel.dtype))
  return _contract_last(x_c, kernel_c), (x_c, kernel_c, dtypes)


def _matmul_backward(dtype, residuals, g):
  x_c, kernel_c, (x_dtype, kernel_dtype) = residuals
  g_c = g.astype(dtype)  # [..., out]
  # The products return `dtype`, as JAX's own transposition does: XLA:CPU
  # runs a bf16 x bf16 -> float32 product only where it fuses it into a
  # library call, and not every backward product is.
  out = {"preferred_element_type": dtype}
  dx = jax.lax.dot_general(  # [..., in]
    g_c, kernel_c, (((g_c.ndim - 1,), (1,)), ((), ())), **out
  )
  leading = tuple(range(x_c.ndim - 1))
  over_leading = ((leading, leading), ((), ()))
  if x_c.shape[-1] <= g_c.shape[-1]:  # [in, out]
    dkernel = jax.lax.dot_general(x_c, g_c, over_leading, **out)
  else:  # [out, in], transposed: the narrower operand on the left.
    dkernel = jax.lax.dot_general(g_c, x_c, over_leading, **out).T
  return dx.astype(x_dtype.dtype), dkernel.astype(kernel_dtype.dtype)


matmul.defvjp(_matmul_forward, _matmul_backward)


class Linear(nnx.Linear):
  """`nnx.Linear` (the same parameters: kernel [in, out], bias [out]) on
  `matmul`: computed in `dtype`, returned in float32.

  x: [..., in] -> [..., out] float32.
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    y = matmul(inputs, self.kernel[...], self.dtype or jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y
