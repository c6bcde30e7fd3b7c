"""Chunked attention (`nn.chunked_attention`): the same outputs and
gradients as the dense `jax.nn.dot_product_attention` under every mask
kind, no leakage across the two-stream mask, and far fewer temporaries."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dblocks_jax.nn.chunked_attention import MaskSpec, attention
from dblocks_jax.tasks.autoregressive import two_stream_mask


def _inputs(seed, batch, q_len, k_len, heads, head_dim, kv_heads=None):
  """q [batch, q_len, heads, head_dim], k and v [batch, k_len, kv_heads,
  head_dim], float32 normals."""
  rng = np.random.default_rng(seed)
  kv_heads = heads if kv_heads is None else kv_heads
  q = rng.normal(size=(batch, q_len, heads, head_dim))
  k = rng.normal(size=(batch, k_len, kv_heads, head_dim))
  v = rng.normal(size=(batch, k_len, kv_heads, head_dim))
  return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


def _dense(q, k, v, mask):
  return jax.nn.dot_product_attention(
    q, k, v, mask=mask.dense(q.shape[1], k.shape[1])
  )


def _chunked(chunks):
  """chunks: chunk_size, or (chunk_size, q_chunk_size)."""
  if not isinstance(chunks, tuple):
    chunks = (chunks, None)
  chunk_size, q_chunk_size = chunks
  return lambda q, k, v, mask: attention(
    q, k, v, mask=mask, chunk_size=chunk_size, q_chunk_size=q_chunk_size
  )


def _output_and_grads(fn, q, k, v, mask, weights):
  """fn's output and d(sum(output x weights)) / d(q, k, v), jitted; mask
  is an argument, so its offset and key_valid are traced."""

  def loss(q, k, v, mask):
    return jnp.sum(fn(q, k, v, mask).astype(jnp.float32) * weights)

  out = jax.jit(fn)(q, k, v, mask)
  grads = jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v, mask)
  return out, grads


def _key_valid(batch, k_len, seed=1):
  """[batch, k_len] bool: row b keeps a random prefix (at least 1 key)."""
  lengths = np.random.default_rng(seed).integers(1, k_len + 1, batch)
  lengths[0] = k_len - 3
  return jnp.asarray(np.arange(k_len)[None] < lengths[:, None])


CASES = {  # name: (mask, batch, q_len, k_len, heads, kv_heads, chunk)
  "bidirectional_ragged": (MaskSpec.bidirectional(), 2, 37, 37, 3, 3, 16),
  "bidirectional_padded": (
    MaskSpec.bidirectional(_key_valid(2, 29)),
    2,
    23,
    29,
    2,
    2,
    8,
  ),
  "bidirectional_chunk_above_length": (
    MaskSpec.bidirectional(),
    1,
    20,
    20,
    2,
    2,
    64,
  ),
  "causal_ragged": (MaskSpec.causal(), 2, 37, 37, 3, 3, 16),
  "causal_query_chunks": (MaskSpec.causal(), 2, 37, 37, 2, 2, (7, 5)),
  "causal_chunk_above_length": (MaskSpec.causal(), 2, 20, 20, 2, 2, 64),
  "causal_grouped_heads": (MaskSpec.causal(), 1, 24, 24, 4, 2, 8),
  "causal_decode_1": (MaskSpec.causal(offset=28), 2, 1, 29, 2, 2, 8),
  "causal_decode_3": (MaskSpec.causal(offset=26), 2, 3, 29, 2, 2, 8),
  "causal_decode_padded": (
    MaskSpec.causal(offset=17, key_valid=_key_valid(2, 20)),
    2,
    3,
    20,
    2,
    2,
    8,
  ),
  "two_stream": (MaskSpec.two_stream(19), 2, 38, 38, 3, 3, 8),
  "two_stream_query_chunks": (MaskSpec.two_stream(13), 1, 26, 26, 2, 2, (4, 6)),
  "two_stream_one_chunk": (MaskSpec.two_stream(5), 1, 10, 10, 2, 2, 64),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_dense_float32(name):
  mask, batch, q_len, k_len, heads, kv_heads, chunk = CASES[name]
  q, k, v = _inputs(0, batch, q_len, k_len, heads, 8, kv_heads)
  weights = jnp.asarray(np.random.default_rng(2).normal(size=q.shape))
  out, grads = _output_and_grads(_chunked(chunk), q, k, v, mask, weights)
  ref, ref_grads = _output_and_grads(_dense, q, k, v, mask, weights)
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  for grad, ref_grad in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(grad, ref_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["causal_ragged", "two_stream"])
def test_bfloat16_matches_float32_reference(name):
  """bf16 inputs: float32 scores and accumulators, so the output is the
  float32 result on the same rounded inputs, rounded once to bf16."""
  mask, batch, q_len, k_len, heads, kv_heads, chunk = CASES[name]
  inputs = _inputs(0, batch, q_len, k_len, heads, 8, kv_heads)
  q, k, v = (x.astype(jnp.bfloat16) for x in inputs)
  weights = jnp.asarray(np.random.default_rng(2).normal(size=q.shape))
  out, grads = _output_and_grads(_chunked(chunk), q, k, v, mask, weights)
  rounded = tuple(x.astype(jnp.float32) for x in (q, k, v))
  ref, ref_grads = _output_and_grads(_dense, *rounded, mask, weights)
  assert out.dtype == jnp.bfloat16
  assert all(g.dtype == jnp.bfloat16 for g in grads)
  np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=2e-2)
  for grad, ref_grad in zip(grads, ref_grads, strict=True):
    scale = float(jnp.abs(ref_grad).max())
    np.testing.assert_allclose(
      grad.astype(jnp.float32), ref_grad, atol=2e-2 * scale
    )


def test_two_stream_dense_is_the_task_mask():
  for length in (1, 4, 7):
    np.testing.assert_array_equal(
      MaskSpec.two_stream(length).dense(2 * length, 2 * length),
      two_stream_mask(length),
    )


def test_two_stream_does_not_leak():
  """Noisy and clean outputs at positions <= i are bit-identical when the
  clean tokens after i, or the other noisy tokens, change."""
  length, cut = 21, 9
  mask = MaskSpec.two_stream(length)
  q, k, v = _inputs(0, 2, 2 * length, 2 * length, 2, 8)
  run = jax.jit(functools.partial(attention, mask=mask, chunk_size=8))
  out = run(q, k, v)
  rng = np.random.default_rng(5)
  positions = np.arange(2 * length)
  noisy, step = positions < length, positions % length
  up_to_cut = step <= cut  # Both streams' rows at positions <= cut.
  changes_and_kept = (
    (~noisy & (step > cut), up_to_cut),  # Later clean tokens.
    (noisy & (step > cut), ~(noisy & (step > cut))),  # Other noisy ones.
    (noisy & (step < cut), ~(noisy & (step < cut))),
  )
  for changed, kept in changes_and_kept:
    noise = rng.normal(size=k.shape) * changed[None, :, None, None]
    noise = jnp.asarray(noise, jnp.float32)
    changed_out = run(q, k + noise, v - 3 * noise)
    np.testing.assert_array_equal(changed_out[:, kept], out[:, kept])
    assert not np.array_equal(changed_out, out)


def test_rows_that_see_no_key_are_zero():
  """key_valid all False in one batch row: output 0 and zero, finite
  gradients there (the dense softmax has no answer for such rows)."""
  q, k, v = _inputs(0, 2, 9, 11, 2, 8)
  valid = jnp.asarray([[True] * 11, [False] * 11])
  mask = MaskSpec.bidirectional(valid)
  fn = functools.partial(attention, mask=mask, chunk_size=4)
  out = jax.jit(fn)(q, k, v)
  grads = jax.jit(jax.grad(lambda *x: fn(*x).sum(), (0, 1, 2)))(q, k, v)
  np.testing.assert_array_equal(out[1], 0.0)
  for grad in grads:
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[1], 0.0)
  np.testing.assert_allclose(
    out[:1], _dense(q[:1], k[:1], v[:1], MaskSpec.bidirectional()), atol=1e-5
  )


def test_mask_errors():
  q, k, v = _inputs(0, 1, 6, 6, 2, 8)
  with pytest.raises(ValueError, match="two_stream"):
    attention(q, k, v, mask=MaskSpec.two_stream(4))
  with pytest.raises(ValueError, match="unknown"):
    MaskSpec("sliding")
  with pytest.raises(ValueError, match="heads"):
    attention(
      q,
      k[:, :, :1].repeat(3, 2),
      v[:, :, :1].repeat(3, 2),
      mask=MaskSpec.causal(),
    )


def _temporaries(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kind", ["causal", "two_stream"])
def test_temporaries_far_below_dense(kind):
  """batch 2, heads 4, length 1024, head_dim 32, chunk 128 (compiled only):
  the dense scores are 32 MiB a copy; the chunked pass keeps tiles."""
  length = 1024
  mask = MaskSpec.causal() if kind == "causal" else MaskSpec.two_stream(512)
  shape = jax.ShapeDtypeStruct((2, length, 4, 32), jnp.float32)
  chunked = functools.partial(attention, mask=mask, chunk_size=128)
  dense = functools.partial(_dense, mask=mask)
  grad = lambda fn: jax.grad(lambda *x: fn(*x).sum(), (0, 1, 2))
  forward = _temporaries(chunked, shape, shape, shape) / _temporaries(
    dense, shape, shape, shape
  )
  backward = _temporaries(grad(chunked), shape, shape, shape) / _temporaries(
    grad(dense), shape, shape, shape
  )
  print(f"{kind}: forward {forward:.3f}, grad {backward:.3f}")
  assert forward < 0.25 and backward < 0.25
