"""The attention paths of `nn.attention.SelfAttention` (ViT, DiT, the
masked-diffusion LM): chunked equals dense (both kinds) in value and
gradient, under no mask and with padded keys; dense is today's function,
untouched; attention dropout keeps "auto" dense and refuses "chunked"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_params import randomize

from dblocks_jax.nn import attention
from dblocks_jax.nn.attention import MaskSpec, SelfAttention

WIDTH, HEADS, TOKENS = 32, 4, 37  # 37: chunks of 16 leave a padded tail.


def _module(impl, kind="einsum", attention_dropout=0.0):
  module = SelfAttention(
    WIDTH,
    HEADS,
    attention_dropout=attention_dropout,
    dropout=0.0,
    kind=kind,
    attention_impl=impl,
    rngs=nnx.Rngs(0),
  )
  return randomize(module, 3)


def _x(batch=2, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(batch, TOKENS, WIDTH)), jnp.float32)


def _value_and_grads(module, x, mask):
  """The output and d(sum(output x weights)) / d(parameters, x)."""
  weights = jnp.asarray(
    np.random.default_rng(5).normal(size=x.shape), jnp.float32
  )

  def loss(module, x):
    return jnp.sum(module(x, mask=mask) * weights)

  out = module(x, mask=mask)
  grads = nnx.grad(loss, argnums=(0, 1))(module, x)
  return out, jax.tree.leaves(grads)


def _assert_close(a, b):
  out_a, grads_a = a
  out_b, grads_b = b
  np.testing.assert_allclose(out_a, out_b, rtol=1e-5, atol=1e-5)
  assert len(grads_a) == len(grads_b)
  for g, h in zip(grads_a, grads_b, strict=True):
    scale = float(np.abs(h).max()) + 1e-12
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-5 * scale)


def _key_valid(batch=2):
  """Row b keeps a prefix of its keys (padding after it)."""
  lengths = np.array([TOKENS - 5, 9])[:batch]
  return jnp.asarray(np.arange(TOKENS)[None] < lengths[:, None])


@pytest.mark.parametrize("kind", attention.ATTENTION_KINDS)
@pytest.mark.parametrize("padded", [False, True])
def test_chunked_equals_dense_in_value_and_gradient(kind, padded, monkeypatch):
  # Chunks of 16 keys and queries: several tiles and a padded tail.
  chunked = attention.chunked_attention.attention
  monkeypatch.setattr(
    attention.chunked_attention,
    "attention",
    lambda q, k, v, *, mask: chunked(q, k, v, mask=mask, chunk_size=16),
  )
  x = _x()
  spec = MaskSpec.bidirectional(_key_valid() if padded else None)
  dense_mask = spec.dense(TOKENS, TOKENS) if padded else None
  dense = _value_and_grads(_module("dense", kind), x, dense_mask)
  for impl in ("chunked", "auto"):  # auto: chunked on CPU.
    _assert_close(_value_and_grads(_module(impl, kind), x, spec), dense)
  if not padded:  # No mask: every token sees every token.
    _assert_close(_value_and_grads(_module("chunked", kind), x, None), dense)


def test_the_paths_a_call_takes():
  module = _module("auto")  # float32: no cuDNN, chunked everywhere.
  assert module.path(None, 8) == "chunked"
  assert module.path(MaskSpec.bidirectional(_key_valid()), 8) == "chunked"
  # A dense mask array, or the dense setting, takes the dense path.
  assert module.path(jnp.ones((1, 1, TOKENS, TOKENS), bool), 8) == "dense"
  assert _module("dense").path(None, 8) == "dense"
  assert _module("auto", attention_dropout=0.1).path(None, 8) == "dense"


def test_dense_is_the_written_out_softmax():
  """The dense path is today's function (the einsum kind, bit for bit a
  MaskSpec's dense form and no mask alike)."""
  module, x = _module("dense"), _x()
  out = module(x)
  np.testing.assert_array_equal(module(x, mask=MaskSpec.bidirectional()), out)
  q, k, v = jnp.moveaxis(
    module.qkv(x).reshape(2, TOKENS, 3, HEADS, WIDTH // HEADS), 2, 0
  )
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(WIDTH // HEADS)
  y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
  np.testing.assert_array_equal(out, module.out(y.reshape(x.shape)))


def test_attention_dropout_keeps_auto_dense_and_refuses_chunked():
  resolve = attention.resolve_attention
  bf16 = dict(dtype=jnp.bfloat16, head_dim=64)
  for platform in ("cpu", "gpu", "tpu"):
    path = resolve("auto", platform, "bidirectional", **bf16)
    assert path == ("cudnn" if platform == "gpu" else "chunked")
    dropped = resolve(
      "auto", platform, "bidirectional", attention_dropout=0.1, **bf16
    )
    assert dropped == "dense"
  with pytest.raises(ValueError, match="attention_dropout=0.1"):
    resolve("chunked", "cpu", "bidirectional", attention_dropout=0.1, **bf16)
  with pytest.raises(ValueError, match="attention_impl='chunked'"):
    _module("chunked", attention_dropout=0.1)
  with pytest.raises(ValueError, match="attention_impl='flash' is unknown"):
    _module("flash")
  assert attention.describe_attention(
    "auto", "gpu", ("bidirectional",), attention_dropout=0.1, **bf16
  ) == ("dense (auto on gpu, attention dropout)")


def test_dropout_in_training_is_the_dense_path():
  """With attention dropout, "auto" trains the einsum path's dropout:
  the same outputs as "dense" under the same key."""
  x = _x()
  outs = [
    _module(impl, attention_dropout=0.5)(x, rngs=nnx.Rngs(dropout=1))
    for impl in ("dense", "auto")
  ]
  np.testing.assert_array_equal(outs[0], outs[1])


def test_llama_keeps_the_resolver_names():
  from dblocks_jax.nn import llama

  for name in (
    "ATTENTION_IMPLS",
    "MASK_KINDS",
    "CUDNN_MAX_HEAD_DIM",
    "mask_kind",
    "resolve_attention",
    "describe_attention",
    "attend",
  ):
    assert getattr(llama, name) is getattr(attention, name)
