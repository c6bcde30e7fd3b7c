"""`lean_backward` (`nn.llama`) and `nn.remat.recomputed` keep the values:
the Llama layers that recompute their norms, AdaLN modulation and gated
last Linears in the backward pass give the outputs and gradients of the
plain layers, conditioned (a per-token condition, `Segments` with a
shared run, the trimmed last layer) and not, in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_params import assert_trees_close, randomize

from dblocks_jax.nn import llama, remat
from dblocks_jax.nn.chunked_attention import MaskSpec

WIDTH, COND, LENGTH = 32, 24, 8


def _stacks(conditioned: bool, attention_impl: str):
  """(plain, lean): two stacks of 3 layers with the same random
  parameters, norm scales included."""
  stacks = []
  for lean in (False, True):
    stack = llama.LlamaStack(
      3,
      width=WIDTH,
      num_heads=4,
      mlp_dim=48,
      cond_dim=COND if conditioned else None,
      attention_impl=attention_impl,
      lean_backward=lean,
      rngs=nnx.Rngs(0),
    )
    randomize(stack, 1)
    for i, layer in enumerate(stack.layers):
      for j, norm in enumerate((layer.norm1, layer.norm2)):
        key = jax.random.key(10 * i + j)
        norm.scale[...] = 1 + 0.3 * jax.random.normal(key, (WIDTH,))
    stacks.append(stack)
  return stacks


def _value_and_grad(stack, x, cond, keep):
  """(the stack's output, the gradients of a loss of it w.r.t. the
  parameters, x and the condition's parts)."""
  graphdef, params = nnx.split(stack)

  def loss(params, x, cond):
    h = nnx.merge(graphdef, params)(
      x,
      cond,
      positions=jnp.tile(jnp.arange(LENGTH), 2),
      mask=MaskSpec.two_stream(LENGTH),
      keep=keep,
    )
    return jnp.sum(jnp.sin(h)) + jnp.sum(h**2) / 7, h

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  (_, h), grads = jax.jit(grad)(params, x, cond)
  return h, grads


@pytest.mark.parametrize(
  "attention_impl, keep", [("dense", None), ("chunked", LENGTH)]
)
def test_the_lean_conditioned_layers_keep_the_values(attention_impl, keep):
  plain, lean = _stacks(True, attention_impl)
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (2, 2 * LENGTH, WIDTH))
  noisy = jax.random.normal(keys[1], (2, LENGTH, COND))
  shared = jax.random.normal(keys[2], (1, 1, COND))
  cond = llama.Segments((noisy, shared), (LENGTH, LENGTH))
  h, grads = _value_and_grad(plain, x, cond, keep)
  lean_h, lean_grads = _value_and_grad(lean, x, cond, keep)
  np.testing.assert_allclose(lean_h, h, rtol=1e-5, atol=1e-5)
  assert_trees_close(lean_grads, grads)


def test_the_lean_conditioned_layers_take_a_dense_condition():
  plain, lean = _stacks(True, "dense")
  x = jax.random.normal(jax.random.key(0), (2, 2 * LENGTH, WIDTH))
  cond = jax.random.normal(jax.random.key(1), (2, 2 * LENGTH, COND))
  h, grads = _value_and_grad(plain, x, cond, None)
  lean_h, lean_grads = _value_and_grad(lean, x, cond, None)
  np.testing.assert_allclose(lean_h, h, rtol=1e-5, atol=1e-5)
  assert_trees_close(lean_grads, grads)


@pytest.mark.parametrize("keep", [None, LENGTH])
def test_the_lean_norms_of_the_plain_layers_keep_the_values(keep):
  plain, lean = _stacks(False, "chunked")
  x = jax.random.normal(jax.random.key(0), (2, 2 * LENGTH, WIDTH))
  h, grads = _value_and_grad(plain, x, None, keep)
  lean_h, lean_grads = _value_and_grad(lean, x, None, keep)
  np.testing.assert_allclose(lean_h, h, rtol=1e-5, atol=1e-5)
  assert_trees_close(lean_grads, grads)


def test_recomputed_gives_the_function_and_its_gradients():
  def fn(x, w, b):
    return {"y": jnp.tanh(x @ w) * b, "z": jnp.sum(x**2, -1)}

  keys = jax.random.split(jax.random.key(0), 3)
  args = (
    jax.random.normal(keys[0], (5, 4)),
    jax.random.normal(keys[1], (4, 3)),
    jax.random.normal(keys[2], (3,)),
  )

  def loss(f):
    return lambda *a: jnp.sum(jnp.cos(f(*a)["y"])) + jnp.sum(f(*a)["z"])

  recomputed = remat.recomputed(fn)
  assert_trees_close(recomputed(*args), fn(*args), rtol=1e-6)
  grads = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))(*args)
  ours = jax.jit(jax.grad(loss(recomputed), argnums=(0, 1, 2)))(*args)
  assert_trees_close(ours, grads, rtol=1e-6)
