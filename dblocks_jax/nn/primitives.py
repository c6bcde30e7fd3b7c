"""JAX primitives written in lax ops (`nn.linear.matmul_p`, GELU's
`nn.activations.slope_times_p`)."""

from jax.extend import core
from jax.interpreters import batching, mlir


def lax_primitive(name: str, impl, abstract_eval, batch) -> core.Primitive:
  """A primitive `name` that evaluates and lowers as `impl` (lax ops, one
  result), with its abstract evaluation and its batching rule; the caller
  adds its differentiation rules."""
  primitive = core.Primitive(name)
  primitive.def_impl(impl)
  primitive.def_abstract_eval(abstract_eval)
  mlir.register_lowering(
    primitive, mlir.lower_fun(impl, multiple_results=False)
  )
  batching.primitive_batchers[primitive] = batch
  return primitive
