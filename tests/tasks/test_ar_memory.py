"""The autoregressive tasks' memory savings keep their values: the chunked
readout and cross-entropy (`model.loss_chunk`) give the dense logits' loss
and gradients for both methods of the AR and recurrent-depth LMs, and the
2T block's shared clean-token modulation (`llama.Segments`) and trimmed
last layer (`keep`) give the outputs and gradients of the concatenated
per-token condition and the full last layer, and the layers' lean backward
(`model.lean_backward`: norms, modulation and gated outputs recomputed in
backward) gives the loss and gradients of the kept ones, in float32."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_params import (
  assert_trees_close,
  block_loss_and_gradients,
  randomize,
)

from configs import ar_pydocs, huginn_pydocs
from dblocks_jax.diffusion import edm
from dblocks_jax.models import ar
from dblocks_jax.nn import llama
from dblocks_jax.nn.chunked_attention import MaskSpec
from dblocks_jax.tasks import autoregressive as tasks

CONFIGS = {"ar": ar_pydocs, "recurrent": huginn_pydocs}


# Both methods of the AR family; the recurrent LM's block-wise arm (its
# baseline runs the same layers).
@pytest.mark.parametrize(
  "name, method",
  [("ar", "dblocks"), ("ar", "e2e"), ("recurrent", "dblocks")],
)
def test_the_chunked_loss_gives_the_dense_loss_and_gradients(name, method):
  config = CONFIGS[name].get_config("smoke")
  config.method = method
  assert config.model.loss_chunk > 0  # The recipes' default.
  dense = copy.deepcopy(config)
  dense.model.loss_chunk = 0
  config.model.loss_chunk = 7  # Chunks that do not divide the tokens.
  loss, grads = block_loss_and_gradients(config)
  dense_loss, dense_grads = block_loss_and_gradients(dense)
  assert float(loss) == pytest.approx(float(dense_loss), rel=1e-5)
  assert_trees_close(grads, dense_grads)


# Both methods of the AR family; the recurrent LM's block-wise arm (its
# baseline runs the same layers).
@pytest.mark.parametrize(
  "name, method",
  [("ar", "dblocks"), ("ar", "e2e"), ("recurrent", "dblocks")],
)
def test_the_lean_backward_gives_the_loss_and_gradients(name, method):
  config = CONFIGS[name].get_config("smoke")
  config.method = method
  assert config.model.lean_backward  # The recipes' default.
  kept = copy.deepcopy(config)
  kept.model.lean_backward = False
  loss, grads = block_loss_and_gradients(config)
  kept_loss, kept_grads = block_loss_and_gradients(kept)
  assert float(loss) == pytest.approx(float(kept_loss), rel=1e-5)
  assert_trees_close(grads, kept_grads)


SPEC = ar.ARConfig(
  vocab_size=40,
  max_seq_len=16,
  num_layers=3,
  width=32,
  num_heads=4,
  mlp_dim=48,
  cond_dim=24,
  frequency_dim=16,
  attention_impl="dense",
)


def _parts(seed=0):
  rngs = nnx.Rngs(seed)
  parts = ar.make_shell(SPEC, rngs)
  parts["targets"] = ar.make_targets(SPEC, trainable=True, rngs=rngs)
  parts["layers"] = ar.make_layers(SPEC, 3, rngs)
  for i, module in enumerate(parts.values()):
    randomize(module, i)
  return parts


def _old_features(parts, tokens, z, sigma, sigma_data):
  """The 2T layers as before the savings: the clean tokens' condition
  broadcast and concatenated per token, every token through every layer,
  the noisy half sliced off at the end."""
  batch, length = tokens.shape
  noisy_cond = tasks.noise_condition(parts, sigma)
  cond = jnp.concatenate([noisy_cond, parts["context"](batch, length)], 1)
  noisy = edm.c_in(sigma, sigma_data)[..., None] * z
  clean = tasks.clean_inputs(parts, tokens, sigma_data)
  h = parts["layers"](
    jnp.concatenate([noisy, clean], 1),
    cond,
    positions=jnp.tile(jnp.arange(length), 2),
    mask=MaskSpec.two_stream(length),
  )
  return h[:, :length], noisy_cond


@pytest.mark.parametrize("attention_impl", ["dense", "chunked"])
def test_shared_clean_modulation_and_trimmed_last_layer_keep_the_values(
  attention_impl,
):
  parts = _parts()
  for layer in parts["layers"].layers:
    layer.attention.attention_impl = attention_impl
  graphdef, params = nnx.split(parts)
  tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, SPEC.vocab_size)
  z = jax.random.normal(jax.random.key(1), (2, 8, SPEC.width))
  sigma = jax.random.uniform(jax.random.key(2), (2, 8), minval=0.01, maxval=5)

  def loss(params, features):
    h, cond = features(nnx.merge(graphdef, params), tokens, z, sigma, 0.5)
    return jnp.sum(jnp.sin(h)) + jnp.sum(h * cond[..., :1]), h

  def features(parts, tokens, z, sigma, sigma_data):
    return tasks.two_stream_features(
      parts, tokens, z, sigma, sigma_data=sigma_data
    )

  new = jax.value_and_grad(lambda p: loss(p, features), has_aux=True)
  old = jax.value_and_grad(lambda p: loss(p, _old_features), has_aux=True)
  (value, h), grads = jax.jit(new)(params)
  (old_value, old_h), old_grads = jax.jit(old)(params)
  np.testing.assert_allclose(h, old_h, rtol=1e-5, atol=1e-6)
  assert float(value) == pytest.approx(float(old_value), rel=1e-5)
  assert_trees_close(grads, old_grads)


def test_segments_cut_and_apply_runs_of_tokens():
  noisy = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
  shared = jnp.array([[[10.0, 20.0]]])
  cond = llama.Segments((noisy, shared), (3, 4))
  dense = jnp.concatenate([noisy, jnp.broadcast_to(shared, (2, 4, 2))], 1)
  x = jnp.ones((2, 7, 2))
  np.testing.assert_array_equal(cond.apply(lambda c, x: c * x, x), dense)
  head = cond.head(5)
  assert head.lengths == (3, 2)
  np.testing.assert_array_equal(
    head.apply(lambda c, x: c * x, x[:, :5]), dense[:, :5]
  )
  assert llama.Segments.of(dense).lengths == (7,)
  with pytest.raises(ValueError, match="part"):
    llama.Segments((noisy,), (4,))
