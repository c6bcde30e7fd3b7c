"""Forward-mode autodiff (`jax.jvp`, `jax.linearize`, Hessian-vector
products) through every Linear (`nn.linear.matmul`) and GELU
(`nn.activations.gelu`), with their backward passes unchanged: the same
gradients, bit for bit, and the same residuals as the custom VJPs they
replaced, under every remat policy; and every model's training loss and
forward pass differentiated in forward mode, in float32 and bf16 (the
language models with model.attention_impl="dense": the chunked attention
has reverse-mode derivatives only)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals
from jax.interpreters import ad
from random_params import random_batch, randomize_experiment

from configs import (
  ar_pydocs,
  dit_fashion_mnist,
  huginn_pydocs,
  mdm_pydocs,
  quickstart,
)
from dblocks_jax import families
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.blockwise import steps
from dblocks_jax.nn import activations, attention, init, layers, linear, remat

# The custom VJPs that `matmul` and `gelu` replaced: the reference backward
# passes.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _old_matmul(x, kernel, dtype):
  return linear._contract_last(x.astype(dtype), kernel.astype(dtype))


def _old_matmul_fwd(x, kernel, dtype):
  x_c, kernel_c = x.astype(dtype), kernel.astype(dtype)
  dtypes = (jnp.empty((0,), x.dtype), jnp.empty((0,), kernel.dtype))
  return linear._contract_last(x_c, kernel_c), (x_c, kernel_c, dtypes)


def _old_matmul_bwd(dtype, residuals, g):
  x_c, kernel_c, (x_dtype, kernel_dtype) = residuals
  g_c = g.astype(dtype)
  out = {"preferred_element_type": dtype}
  dx = jax.lax.dot_general(
    g_c, kernel_c, (((g_c.ndim - 1,), (1,)), ((), ())), **out
  )
  leading = tuple(range(x_c.ndim - 1))
  over_leading = ((leading, leading), ((), ()))
  if x_c.shape[-1] <= g_c.shape[-1]:
    dkernel = jax.lax.dot_general(x_c, g_c, over_leading, **out)
  else:
    dkernel = jax.lax.dot_general(g_c, x_c, over_leading, **out).T
  return dx.astype(x_dtype.dtype), dkernel.astype(kernel_dtype.dtype)


_old_matmul.defvjp(_old_matmul_fwd, _old_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _old_gelu(x, approximate=False):
  return activations._gelu(x, approximate)


def _old_gelu_fwd(x, approximate):
  return _old_gelu(x, approximate), x


def _old_gelu_bwd(approximate, x, g):
  x = jax.lax.optimization_barrier(x)
  return ((g * activations._gelu_slope(x, approximate)).astype(x.dtype),)


_old_gelu.defvjp(_old_gelu_fwd, _old_gelu_bwd)


def _normal(seed, *shapes):
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  return [jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]


def _central_difference(f, primals, tangents, eps):
  plus = f(*(p + eps * t for p, t in zip(primals, tangents, strict=True)))
  minus = f(*(p - eps * t for p, t in zip(primals, tangents, strict=True)))
  return (plus - minus) / (2 * eps)


# A widening and a narrowing kernel: the two operand orders of dkernel.
SHAPES = [(6, 24), (24, 6)]


@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_jvp_matches_central_differences_float32(shape):
  x, kernel, tx, tkernel = _normal(
    0, (3, 5, shape[0]), shape, (3, 5, shape[0]), shape
  )
  f = jax.jit(lambda x, w: linear.matmul(x, w, jnp.float32))
  y, tangent = jax.jvp(f, (x, kernel), (tx, tkernel))
  assert y.dtype == tangent.dtype == jnp.float32
  np.testing.assert_array_equal(y, f(x, kernel))
  # Bilinear: the central difference has no truncation error.
  fd = _central_difference(f, (x, kernel), (tx, tkernel), 0.5)
  np.testing.assert_allclose(tangent, fd, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
    tangent, tx @ kernel + x @ tkernel, rtol=1e-5, atol=1e-5
  )
  _, f_lin = jax.linearize(f, x, kernel)
  np.testing.assert_allclose(f_lin(tx, tkernel), tangent, rtol=1e-6, atol=1e-6)


def test_matmul_jvp_in_bfloat16_is_the_product_of_rounded_operands():
  x, kernel, tx, tkernel = _normal(1, (4, 16), (16, 8), (4, 16), (16, 8))
  f = jax.jit(lambda x, w: linear.matmul(x, w, jnp.bfloat16))
  y, tangent = jax.jvp(f, (x, kernel), (tx, tkernel))
  assert y.dtype == tangent.dtype == jnp.float32
  # The tangent products run on the bf16-rounded operands and tangents.
  x16, k16, tx16, tk16 = (
    np.asarray(a.astype(jnp.bfloat16), np.float64)
    for a in (x, kernel, tx, tkernel)
  )
  np.testing.assert_allclose(
    tangent, tx16 @ k16 + x16 @ tk16, rtol=1e-5, atol=1e-5
  )
  # Against the float32 finite difference: bf16's rounding (2^-9 relative
  # per operand), loosely.
  fd = _central_difference(
    lambda x, w: linear.matmul(x, w, jnp.float32),
    (x, kernel),
    (tx, tkernel),
    0.5,
  )
  np.testing.assert_allclose(tangent, fd, rtol=0.05, atol=0.1)
  _, f_lin = jax.linearize(f, x, kernel)
  np.testing.assert_array_equal(f_lin(tx, tkernel), tangent)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_gradients_equal_the_custom_vjp_ones(shape, dtype):
  x, kernel, g = _normal(2, (3, 5, shape[0]), shape, (3, 5, shape[1]))
  _, ours = jax.vjp(lambda x, w: linear.matmul(x, w, dtype), x, kernel)
  _, old = jax.vjp(lambda x, w: _old_matmul(x, w, dtype), x, kernel)
  # The same products on the same operands: equal bit for bit.
  for a, b in zip(ours(g), old(g), strict=True):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
  if dtype == jnp.float32:  # And JAX's own, up to summation order.
    _, plain = jax.vjp(lambda x, w: x @ w, x, kernel)
    for a, b in zip(ours(g), plain(g), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_matmul_gradients_come_back_in_the_operands_dtypes():
  x, kernel, g = _normal(3, (2, 8), (8, 4), (2, 4))
  x16 = x.astype(jnp.bfloat16)
  for dtype in (jnp.float32, jnp.bfloat16):
    f = functools.partial(linear.matmul, dtype=dtype)
    _, backward = jax.vjp(f, x16, kernel)
    dx, dkernel = backward(g)
    assert dx.dtype == jnp.bfloat16 and dkernel.dtype == jnp.float32


def test_matmul_transposes_a_symbolic_zero_cotangent_to_zero():
  x, kernel = _normal(4, (2, 8), (8, 4))
  transpose = ad.primitive_transposes[linear.matmul_p]
  zero = ad.Zero(jax.core.ShapedArray((2, 4), jnp.float32))
  for args, undefined in (
    ((ad.UndefinedPrimal(jax.typeof(x)), kernel), 0),
    ((x, ad.UndefinedPrimal(jax.typeof(kernel))), 1),
  ):
    out = transpose(zero, *args, dtype=np.dtype(jnp.float32))
    assert type(out[undefined]) is ad.Zero
    assert out[undefined].aval.shape == args[undefined].aval.shape


def _matmul_loss(matmul):
  return lambda x, w: jnp.sum(jnp.sin(matmul(x, w)) ** 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_hessian_vector_product(shape):
  x, kernel, tx, tkernel = _normal(
    5, (4, shape[0]), shape, (4, shape[0]), shape
  )
  ours = _matmul_loss(lambda x, w: linear.matmul(x, w, jnp.float32))
  plain = _matmul_loss(jnp.matmul)

  def hvp(f):
    grad = jax.grad(f, (0, 1))
    return jax.jit(lambda *p: jax.jvp(grad, p, (tx, tkernel))[1])(x, kernel)

  got = hvp(ours)
  for a, b in zip(got, hvp(plain), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  grad = jax.jit(jax.grad(ours, (0, 1)))
  eps = 1e-2  # Against the central difference of the gradient.
  plus = grad(x + eps * tx, kernel + eps * tkernel)
  minus = grad(x - eps * tx, kernel - eps * tkernel)
  for a, p, m in zip(got, plus, minus, strict=True):
    fd = (p - m) / (2 * eps)
    np.testing.assert_allclose(a, fd, rtol=1e-2, atol=2e-2 * np.abs(fd).max())
  # The full Hessian in the kernel (jacfwd of jacrev: vmap over tangents).
  hessian = jax.hessian(lambda w: ours(x, w))(kernel)
  expected = jax.hessian(lambda w: plain(x, w))(kernel)
  np.testing.assert_allclose(hessian, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_vmap_of_grad_with_batched_x_or_kernel(dtype):
  xs, kernels = _normal(6, (3, 5, 8), (3, 8, 4))
  grad = jax.grad(_matmul_loss(lambda x, w: linear.matmul(x, w, dtype)), (0, 1))
  one_by_one = lambda xs, ws: [
    jnp.stack(g) for g in zip(*map(grad, xs, ws), strict=True)
  ]
  # Only x batched: the primitive with the batch axis in front of x.
  got = jax.vmap(grad, in_axes=(0, None))(xs, kernels[0])
  want = one_by_one(xs, [kernels[0]] * 3)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The batch axis of x last but one (x [5, batch, 8]).
  got = jax.vmap(grad, in_axes=(1, None))(xs.transpose(1, 0, 2), kernels[0])
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # A batched kernel: vmap of the plain matmul.
  for in_axes, x_args in (((0, 0), xs), ((None, 0), xs[0])):
    got = jax.vmap(grad, in_axes=in_axes)(x_args, kernels)
    want = one_by_one(xs if in_axes[0] == 0 else [xs[0]] * 3, kernels)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for a, b in zip(got, want, strict=True):
      np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


X = jnp.linspace(-6.0, 6.0, 241)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_jvp_matches_central_differences(approximate):
  f = jax.jit(lambda x: activations.gelu(x, approximate))
  t = _normal(7, X.shape)[0]
  y, tangent = jax.jvp(f, (X,), (t,))
  np.testing.assert_array_equal(y, f(X))
  fd = _central_difference(f, (X,), (t,), 1e-2)
  np.testing.assert_allclose(tangent, fd, rtol=1e-3, atol=1e-3)
  ref = jax.jvp(lambda x: jax.nn.gelu(x, approximate=approximate), (X,), (t,))
  np.testing.assert_allclose(tangent, ref[1], rtol=0, atol=2e-6)
  _, f_lin = jax.linearize(f, X)
  np.testing.assert_allclose(f_lin(t), tangent, rtol=1e-6, atol=1e-6)
  # bf16 in, bf16 tangent out.
  x16, t16 = X.astype(jnp.bfloat16), t.astype(jnp.bfloat16)
  y16, tangent16 = jax.jvp(f, (x16,), (t16,))
  assert y16.dtype == tangent16.dtype == jnp.bfloat16
  np.testing.assert_allclose(tangent16, tangent, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_gradient_and_hvp(approximate):
  x = X.reshape(-1, 1) * jnp.ones((1, 3))
  g, v = _normal(8, x.shape, x.shape)
  _, ours = jax.vjp(lambda x: activations.gelu(x, approximate), x)
  _, old = jax.vjp(lambda x: _old_gelu(x, approximate), x)
  np.testing.assert_array_equal(ours(g)[0], old(g)[0])

  def loss(gelu):
    return lambda x: jnp.sum(jnp.sin(gelu(x)))

  ours = loss(lambda x: activations.gelu(x, approximate))
  plain = loss(lambda x: jax.nn.gelu(x, approximate=approximate))
  grad = jax.jit(jax.grad(ours))
  hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(ours), (x,), (v,))[1])(x, v)
  want = jax.jvp(jax.grad(plain), (x,), (v,))[1]
  np.testing.assert_allclose(hvp, want, rtol=1e-4, atol=1e-4)
  eps = 1e-2
  fd = (grad(x + eps * v) - grad(x - eps * v)) / (2 * eps)
  np.testing.assert_allclose(hvp, fd, rtol=1e-2, atol=1e-2)


def test_gelu_vmap_of_jvp_and_grad():
  xs, ts = _normal(9, (4, 7), (4, 7))
  gelu = activations.gelu
  # The tangent batched, the point not (a Jacobian column at a time).
  got = jax.vmap(lambda t: jax.jvp(gelu, (xs[0],), (t,))[1])(ts)
  want = jnp.stack([jax.jvp(gelu, (xs[0],), (t,))[1] for t in ts])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(gelu(x) ** 2))
  got = jax.vmap(grad)(xs)
  np.testing.assert_allclose(got, jnp.stack([grad(x) for x in xs]), atol=1e-6)
  hessian = jax.hessian(lambda x: jnp.sum(gelu(x) ** 2))(xs[0])
  expected = jax.hessian(lambda x: jnp.sum(jax.nn.gelu(x, False) ** 2))(xs[0])
  np.testing.assert_allclose(hessian, expected, rtol=1e-4, atol=1e-4)


# The primitives under the names of what they replace, in the residuals'
# descriptions.
_SAME_OPERATION = {
  "dblocks_matmul": "dot_general",
  "custom_jvp_call": "custom_vjp_call",
}


def _residuals(capsys, f, *args) -> list[str]:
  """What reverse mode keeps (`print_saved_residuals`): each residual's
  aval and where it comes from (an argument, or the output of which
  operation), sorted, zero-sized ones left out."""
  capsys.readouterr()
  print_saved_residuals(f, *args)
  residuals = []
  for line in capsys.readouterr().out.splitlines():
    aval, origin = line.strip().split(" ", 1)
    if aval.endswith("[0]"):
      continue
    if origin.startswith("output of "):
      operation = origin.split()[2]
      origin = f"output of {_SAME_OPERATION.get(operation, operation)}"
    residuals.append(f"{aval} {origin}")
  return sorted(residuals)


@pytest.fixture
def old_layers(monkeypatch):
  """A context in which the layers run on the replaced custom VJPs."""

  def use_old():
    monkeypatch.setattr(linear, "matmul", _old_matmul)
    monkeypatch.setattr(attention, "gelu", _old_gelu)

  return use_old


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_mlp_keeps_the_same_residuals_as_the_custom_vjps(
  dtype, capsys, old_layers
):
  fc1 = init.linear(8, 32, rngs=nnx.Rngs(0), dtype=dtype)
  fc2 = init.linear(32, 8, rngs=nnx.Rngs(1), dtype=dtype)
  (g1, s1), (g2, s2) = nnx.split(fc1), nnx.split(fc2)
  x = jnp.ones((2, 5, 8))

  def mlp(s1, s2, x):
    h = attention.gelu(nnx.merge(g1, s1)(x))
    return jnp.sum(nnx.merge(g2, s2)(h) ** 2)

  new = _residuals(capsys, mlp, s1, s2, x)
  old_layers()
  old = _residuals(capsys, mlp, s1, s2, x)
  assert new == old
  # x, the kernels, GELU's input and fc2's input (in the compute dtype),
  # and the loss's 2y: nothing of GELU's slope.
  hidden = [r for r in new if r.split()[0].endswith("[2,5,32]")]
  assert len(hidden) == 2 and len(new) == 6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_every_remat_policy_keeps_what_it_kept(dtype, capsys, old_layers):
  def residuals():
    out = {}
    for policy in remat.CHOICES:
      stack = layers.LayerStack(
        2,
        remat=policy,
        rngs=nnx.Rngs(0),
        width=16,
        num_heads=2,
        mlp_dim=64,
        cond_dim=24,
        dtype=dtype,
      )
      graphdef, state = nnx.split(stack)

      def loss(state, x, cond, graphdef=graphdef):
        return jnp.sum(nnx.merge(graphdef, state)(x, cond) ** 2)

      out[policy] = _residuals(
        capsys, loss, state, jnp.ones((2, 5, 16)), jnp.ones((2, 24))
      )
    return out

  new = residuals()
  old_layers()
  old = residuals()
  for policy in remat.CHOICES:
    assert new[policy] == old[policy], policy
  # The dots policies keep the Linears' outputs ([2, 5, 64]: fc1's).
  fc1_out = "f32[2,5,64] output of dot_general"
  assert new["dots_saveable"].count(fc1_out) == 2  # One a layer.
  assert new["full"].count(fc1_out) == 0
  assert len(new["dots_with_no_batch_dims_saveable"]) < len(
    new["dots_saveable"]
  )


def test_policy_counts_the_matmul_as_a_dot_without_batch_dims():
  x = jax.core.ShapedArray((2, 5, 8), jnp.bfloat16)
  kernel = jax.core.ShapedArray((8, 4), jnp.bfloat16)
  bf16 = np.dtype(jnp.bfloat16)
  for name in ("dots_saveable", "dots_with_no_batch_dims_saveable"):
    policy = remat.policy(name)
    assert policy(linear.matmul_p, x, kernel, dtype=bf16)
    assert not policy(jax.lax.exp_p, x)
  assert not remat.policy("nothing_saveable")(
    linear.matmul_p, x, kernel, dtype=bf16
  )


# Every built-in model: the DiffusionBlocks training loss of block 0 and the
# forward pass in evaluation mode (the same network, no dropout).

SMOKE = {
  "vit": lambda: quickstart.get_config("smoke"),
  "dit": lambda: dit_fashion_mnist.get_config("smoke"),
  "mdm": lambda: mdm_pydocs.get_config("smoke"),
  "ar": lambda: ar_pydocs.get_config("smoke"),
  "recurrent": lambda: huginn_pydocs.get_config("smoke"),
}


def _losses(name, dtype):
  """(loss functions of block 0's and the shared parameters: {"train": the
  training loss, "forward": the loss of an evaluation-mode forward pass},
  the parameters), on random parameters, a random batch and fixed keys."""
  config = SMOKE[name]()
  config.model.dtype = dtype
  if "attention_impl" in config.model:
    # The chunked and cuDNN attentions are custom VJPs: reverse mode only.
    config.model.attention_impl = "dense"
  if "loss_chunk" in config.model:
    config.model.loss_chunk = 0  # The chunked loss is a custom VJP too.
  if "lean_backward" in config.model:
    config.model.lean_backward = False  # Recomputed layers: custom VJPs.
  family = families.get(config.model.name)
  experiment = randomize_experiment(family.build(config))
  graphdefs, shared, blocks, fixed = parts_lib.split(experiment.model)
  plan, task = experiment.plan, experiment.task
  block_defs = graphdefs.blocks[0]
  block_loss = steps.block_loss(
    task, graphdefs, block_defs, plan.noise, plan.train_ranges
  )
  params = {"shared": shared["params"], "block": blocks[0]["params"]}
  rest = {"shared": shared["rest"], "block": blocks[0]["rest"]}
  batch = random_batch(family, config)
  key = jax.random.key(1)
  if hasattr(task, "level_shape"):
    level_shape = tuple(task.level_shape(batch))
  else:
    level_shape = (jax.tree.leaves(batch)[0].shape[0],)
  lo, hi = np.asarray(plan.train_ranges)[0]
  level = plan.noise.sample(jax.random.key(2), level_shape, lo, hi)

  def train(params):
    return block_loss(params, rest, fixed, batch, key, 0)[0]

  def forward(params):
    parts = dict(parts_lib.merge(graphdefs.fixed, fixed))
    for group, defs in (("shared", graphdefs.shared), ("block", block_defs)):
      arrays = {"params": params[group], "rest": rest[group]}
      parts.update(parts_lib.merge(defs, arrays))
    return task.loss(parts, batch, level, key, train=False)[0]

  return {"train": train, "forward": forward}, params


def _tangent(params, seed=3):
  """A random direction of the parameters' scale: N(0, 1/fan_in) for
  matrices, N(0, 0.01) for vectors."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    tree,
    [
      (
        jax.random.normal(k, x.shape)
        * (1 / np.sqrt(x.shape[0]) if x.ndim >= 2 else 0.1)
      ).astype(x.dtype)
      for k, x in zip(keys, leaves, strict=True)
    ],
  )


def _forward_mode(losses, params, tangent):
  """jvp and linearize of every loss, each jitted once: ({name: (loss,
  jvp)}, {name: linearized tangent}, the jitted jvp)."""
  jvp = jax.jit(
    lambda p, t: {k: jax.jvp(f, (p,), (t,)) for k, f in losses.items()}
  )
  lin = jax.jit(
    lambda p, t: {k: jax.linearize(f, p)[1](t) for k, f in losses.items()}
  )
  return jvp(params, tangent), lin(params, tangent), jvp


@pytest.mark.parametrize("name", sorted(SMOKE))
def _finite_difference(jvp, params, tangent, key, eps):
  """Richardson's extrapolation of the central differences at eps and
  2 eps (error O(eps^4)) of loss `key`, evaluated by the jitted jvp."""

  def central(eps):
    shifted = [
      jax.tree.map(lambda p, t, s=s: p + s * eps * t, params, tangent)
      for s in (1, -1)
    ]
    plus, minus = (float(jvp(p, tangent)[key][0]) for p in shifted)
    return (plus - minus) / (2 * eps)

  return (4 * central(eps) - central(2 * eps)) / 3


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_model_losses_have_forward_mode_derivatives(name):
  float32 = {}
  for dtype in ("float32", "bfloat16"):
    losses, params = _losses(name, dtype)
    tangent = _tangent(params)
    out, linearized, jvp = _forward_mode(losses, params, tangent)
    for key, (loss, derivative) in out.items():
      loss, derivative = float(loss), float(derivative)
      assert np.isfinite(loss) and np.isfinite(derivative), (dtype, key)
      assert derivative != 0.0
      rtol = 1e-4 if dtype == "float32" else 1e-3
      assert float(linearized[key]) == pytest.approx(derivative, rel=rtol)
      if dtype == "bfloat16":
        # bf16 matmuls: within a few of bf16's 2^-8 of the float32 one.
        assert derivative == pytest.approx(float32[key], rel=5e-2), key
        continue
      float32[key] = derivative
      # The smoke ViT is strongly curved along the direction (the central
      # difference is 1% off at eps = 1e-3), the losses of the language
      # models are large against the derivative (float32 rounding at small
      # eps): the best of three steps, each within 0.15% here.
      errors = [
        abs(_finite_difference(jvp, params, tangent, key, eps) / derivative - 1)
        for eps in (5e-4, 2e-3, 8e-3)
      ]
      assert min(errors) < 5e-3, (key, errors)
