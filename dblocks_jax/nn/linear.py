"""The Linear layer of every model: a matmul primitive whose transposes are
ours.

`matmul` is x @ kernel with both operands cast to the compute dtype,
accumulated in and returned as float32 (below float32, XLA:CPU also runs
that faster than a bf16 result). It binds `matmul_p`, a JAX primitive that
is bilinear in its two operands (`jax.interpreters.ad.defbilinear`):

* forward mode: the tangent of x @ kernel is tx @ kernel + x @ tkernel, the
  same primitive on the tangents, so `jax.jvp`, `jax.linearize` and
  Hessian-vector products (`jax.jvp(jax.grad(f))`) work through every
  Linear;
* reverse mode: the primitive's two transpose rules are the backward pass
  of the mixed-precision matmul. The cotangent is cast to the compute
  dtype, and the two products run in it and return it, as JAX's own
  transposition does; the results come back in the operands' dtypes.
* JAX computes the kernel's gradient as (g^T x)^T, and XLA:CPU transposes
  the left operand of a contraction over its leading axes: for a widening
  layer (an MLP's first) that is the [tokens, 4 width] cotangent. Here the
  narrower of x and g goes on the left.

`matmul` casts its operands before binding the primitive, so what reverse
mode keeps of a Linear is the cast operands (bf16 with bf16 compute), and
the casts' own transposes return the gradients in the operands' dtypes.
The transpose rules are plain lax ops: they can be differentiated again
(the forward-over-reverse Hessian-vector product).

Under `jax.vmap` with only x batched the primitive itself runs (the batch
axis moved to the front of x); with a batched kernel the batched value is
`jax.vmap` of the plain lax matmul, whose gradients are JAX's own
transposition (the same values, without the operand order above).

The remat policies (`nn.remat`) count `matmul_p` as a `dot_general` without
batch dimensions, which it lowers to.

In float32 the forward pass is `nnx.Linear`'s, and the gradients are the
same products (summed in another order).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.interpreters import ad

from dblocks_jax.nn import primitives


def matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  """x @ kernel, both cast to `dtype`, accumulated in float32.

  Args:
    x: [..., in] any float dtype.
    kernel: [in, out] any float dtype.
    dtype: the compute dtype (float32 or bfloat16).

  Returns:
    [..., out] float32. The gradients come back in x's and kernel's dtypes
    (products in `dtype`); the tangents (`jax.jvp`) are float32 [..., out].
  """
  dtype = np.dtype(dtype)
  return matmul_p.bind(x.astype(dtype), kernel.astype(dtype), dtype=dtype)


def _contract_last(x, kernel):
  """x: [..., in] @ kernel: [in, out] -> float32 [..., out]."""
  return jax.lax.dot_general(
    x,
    kernel,
    (((x.ndim - 1,), (0,)), ((), ())),
    preferred_element_type=jnp.float32,
  )


def _matmul_lax(x, kernel, *, dtype):
  """The primitive in lax ops: x [..., in], kernel [in, out] -> float32
  [..., out], the operands cast to `dtype`."""
  return _contract_last(x.astype(dtype), kernel.astype(dtype))


def _abstract_eval(x, kernel, *, dtype):
  del dtype
  if x.ndim < 1 or kernel.ndim != 2 or x.shape[-1] != kernel.shape[0]:
    raise TypeError(
      f"matmul takes x [..., in] and kernel [in, out], got {x.shape} and "
      f"{kernel.shape}."
    )
  return jax.core.ShapedArray((*x.shape[:-1], kernel.shape[1]), jnp.float32)


def _transpose_x(g, x, kernel, *, dtype):
  """dx [..., in] = g [..., out] @ kernel^T, in `dtype`, then x's dtype."""
  if type(g) is ad.Zero:
    return ad.Zero(x.aval.to_ct_aval())
  g_c = g.astype(dtype)
  # The products return `dtype`, as JAX's own transposition does: XLA:CPU
  # runs a bf16 x bf16 -> float32 product only where it fuses it into a
  # library call, and not every backward product is.
  dx = jax.lax.dot_general(
    g_c,
    kernel.astype(dtype),
    (((g_c.ndim - 1,), (1,)), ((), ())),
    preferred_element_type=dtype,
  )
  return dx.astype(x.aval.dtype)


def _transpose_kernel(g, x, kernel, *, dtype):
  """dkernel [in, out] = x^T g over the leading axes, in `dtype`, then the
  kernel's dtype; the narrower of x and g is the product's left operand."""
  if type(g) is ad.Zero:
    return ad.Zero(kernel.aval.to_ct_aval())
  g_c, x_c = g.astype(dtype), x.astype(dtype)  # [..., out], [..., in]
  leading = tuple(range(x_c.ndim - 1))
  over_leading = ((leading, leading), ((), ()))
  out = {"preferred_element_type": dtype}
  if x_c.shape[-1] <= g_c.shape[-1]:  # [in, out]
    dkernel = jax.lax.dot_general(x_c, g_c, over_leading, **out)
  else:  # [out, in], transposed: the narrower operand on the left.
    dkernel = jax.lax.dot_general(g_c, x_c, over_leading, **out).T
  return dkernel.astype(kernel.aval.dtype)


def _batch(args, dims, *, dtype):
  x, kernel = args
  x_dim, kernel_dim = dims
  if kernel_dim is None:  # Only x is batched: one more leading axis.
    x = jnp.moveaxis(x, x_dim, 0)
    return matmul_p.bind(x, kernel, dtype=dtype), 0
  # A batched kernel: the plain lax matmul, batched and transposed by JAX.
  lax_fn = jax.vmap(
    lambda x, kernel: _matmul_lax(x, kernel, dtype=dtype),
    in_axes=(x_dim, kernel_dim),
  )
  return lax_fn(x, kernel), 0


matmul_p = primitives.lax_primitive(
  "dblocks_matmul", _matmul_lax, _abstract_eval, _batch
)
ad.defbilinear(matmul_p, _transpose_x, _transpose_kernel)


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
