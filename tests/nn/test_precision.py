"""Mixed precision (`model.dtype`, `model.param_dtype`): bfloat16 compute
on float32 parameters trains the same model as float32, within bfloat16's
rounding, keeps the parameters float32, and compiles to bfloat16 matmuls."""

import copy
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_params import random_batch, randomize_experiment

from configs import (
  ar_pydocs,
  dit_fashion_mnist,
  huginn_pydocs,
  mdm_pydocs,
  quickstart,
)
from dblocks_jax import families, nn
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import common

SMOKE = {  # One smoke config per model family.
  "vit": lambda: quickstart.get_config("smoke,official"),
  "dit": lambda: dit_fashion_mnist.get_config("smoke"),
  "mdm": lambda: mdm_pydocs.get_config("smoke"),
  "ar": lambda: ar_pydocs.get_config("smoke"),
  "recurrent": lambda: huginn_pydocs.get_config("smoke"),
}


def _trainer(config, dtype):
  config = copy.deepcopy(config)
  config.model.dtype = dtype
  family = families.get(config.model.name)
  experiment = randomize_experiment(family.build(config))
  return family, config, common.make_trainer(config, experiment, None)


def _floats(tree):
  return [
    x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  ]


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_bfloat16_step_matches_float32_and_keeps_float32_params(name):
  config = SMOKE[name]()
  losses = {}
  for dtype in ("float32", "bfloat16"):
    family, c, trainer = _trainer(config, dtype)
    metrics = trainer.step(random_batch(family, c))
    losses[dtype] = float(metrics["loss"])
    state = trainer.state
    groups = [state["shared"], *(b for b in state["blocks"] if b)]
    for group in groups:  # Parameters and Adam moments, after the update.
      leaves = _floats([group["params"], group["opt_state"]])
      assert leaves and {str(x.dtype) for x in leaves} == {"float32"}
    trainer.close()
  assert np.isfinite(losses["float32"])
  # bfloat16 keeps 8 bits of mantissa (a relative rounding of 2^-9 per
  # matmul input); the smoke losses move by 3e-5 to 5e-4 of their value,
  # below bfloat16's own resolution (2^-8 = 3.9e-3): the float32 norms,
  # softmax, loss and EDM preconditioning add no error of their own.
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=3e-3)
  assert losses["bfloat16"] != losses["float32"]  # The dtype took effect.


def test_bfloat16_parameters_are_stored_and_trained_in_bfloat16():
  config = SMOKE["vit"]()
  config.model.param_dtype = "bfloat16"
  family, c, trainer = _trainer(config, "bfloat16")
  before = trainer.state["blocks"][0]["params"]
  assert {str(x.dtype) for x in _floats(before)} == {"bfloat16"}
  metrics = trainer.step(random_batch(family, c))
  after = trainer.state["blocks"][0]["params"]
  assert {str(x.dtype) for x in _floats(after)} == {"bfloat16"}
  assert np.isfinite(float(metrics["loss"]))
  trainer.close()


def test_matmul_runs_both_passes_in_bfloat16():
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (2, 5, 8))
  kernel = jax.random.normal(keys[1], (8, 3))
  g = jax.random.normal(keys[2], (2, 5, 3))
  y, backward = jax.vjp(
    lambda x, w: nn.linear.matmul(x, w, jnp.bfloat16), x, kernel
  )
  dx, dkernel = backward(g)
  assert y.dtype == dx.dtype == dkernel.dtype == jnp.float32
  # The forward product of bf16-rounded operands, in float32; the backward
  # products of the bf16-rounded cotangent, rounded to bf16.
  x16, k16, g16 = (
    np.asarray(t.astype(jnp.bfloat16), np.float64) for t in (x, kernel, g)
  )
  np.testing.assert_allclose(y, x16 @ k16, rtol=1e-6, atol=1e-6)
  for got, want in (
    (dx, g16 @ k16.T),
    (dkernel, np.einsum("bti,bto->io", x16, g16)),
  ):
    assert np.all(got == got.astype(jnp.bfloat16))
    np.testing.assert_allclose(got, want, rtol=2**-8, atol=1e-6)
  # A bf16 input gets a bf16 gradient, as autodiff's would be.
  _, backward = jax.vjp(
    lambda x: nn.linear.matmul(x, kernel, jnp.bfloat16),
    x.astype(jnp.bfloat16),
  )
  assert backward(g)[0].dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(16, 64), (64, 16)])
def test_matmul_in_float32_has_autodiffs_gradients(shape):
  # A widening and a narrowing kernel: the two operand orders of dkernel.
  keys = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(keys[0], (4, 7, shape[0]))
  kernel = jax.random.normal(keys[1], shape)
  g = jax.random.normal(keys[2], (4, 7, shape[1]))
  y, ours = jax.vjp(lambda x, w: nn.linear.matmul(x, w, jnp.float32), x, kernel)
  y_ref, theirs = jax.vjp(lambda x, w: x @ w, x, kernel)
  np.testing.assert_array_equal(y, y_ref)
  for a, b in zip(ours(g), theirs(g), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _dots(config, dtype) -> tuple[int, int, int, int]:
  """Counts of the lowered step's dot_generals: all of them, the attention
  products (4-d float32 operands), those with two bf16 operands, and those
  of them that accumulate and return float32."""
  family, c, trainer = _trainer(config, dtype)
  stablehlo = trainer.lower_step(family.batch_spec(c), block=0).as_text()
  trainer.close()
  dot = r"stablehlo\.dot_general[^\n]*"
  bf16 = dot + r"\(tensor<[^>]*xbf16>, tensor<[^>]*xbf16>\)"
  counts = (
    dot,
    dot + r"\(tensor<\d+x\d+x\d+x\d+xf32>",
    bf16,
    bf16 + r" -> tensor<[^>]*xf32>",
  )
  return tuple(len(re.findall(pattern, stablehlo)) for pattern in counts)


def test_bfloat16_step_runs_its_matmuls_in_bfloat16():
  config = SMOKE["vit"]()
  every, attention, both, _ = _dots(config, "float32")
  assert both == 0
  # Block 0's one layer: attention's two products, forward and backward.
  assert attention == 6
  # Every other matmul (the projections, the MLP, the adaLN and the noise
  # embedder) runs in bf16, forward and backward (`nn.linear.matmul`); the
  # forward ones, about a third, accumulate in and return float32, the
  # backward ones return bf16. The attention products stay float32.
  rest = every - attention
  counts = _dots(config, "bfloat16")
  assert counts[:3] == (every, attention, rest)
  assert rest // 3 <= counts[3] < rest // 2


@pytest.mark.parametrize("field", ["dtype", "param_dtype"])
def test_bad_dtype_is_one_line_naming_the_field(field):
  config = SMOKE["dit"]()
  config.model[field] = "float16"
  with pytest.raises(ConfigError, match=rf"^model\.{field}='float16' is"):
    families.get("dit").build(config)
