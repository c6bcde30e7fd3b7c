"""`nn.chunked_loss.linear_cross_entropy`: the head's weighted cross-entropy
over token chunks equals the dense logits' (optax), in value, per-token CE,
argmax hits and gradients, whatever the chunk; the weights carry none."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dblocks_jax.nn import chunked_loss

TOKENS, WIDTH, VOCAB = 37, 8, 50


def _inputs(seed=0):
  k = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(k[0], (TOKENS, WIDTH))
  kernel = jax.random.normal(k[1], (WIDTH, VOCAB)) / np.sqrt(WIDTH)
  bias = 0.1 * jax.random.normal(k[2], (VOCAB,))
  labels = jax.random.randint(k[3], (TOKENS,), 0, VOCAB)
  weights = jax.random.uniform(k[4], (TOKENS,))
  return x, kernel, bias, labels, weights


def _dense(x, kernel, bias, labels, weights):
  logits = x @ kernel + (0 if bias is None else bias)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(weights * ce), ce, jnp.argmax(logits, -1) == labels


@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_the_dense_loss_and_gradients(chunk, with_bias):
  x, kernel, bias, labels, weights = _inputs()
  bias = bias if with_bias else None

  def chunked(x, kernel, bias):
    return chunked_loss.linear_cross_entropy(
      x, kernel, bias, labels, weights, chunk=chunk
    )

  def dense(x, kernel, bias):
    return _dense(x, kernel, bias, labels, weights)

  for ours, ref in zip(
    jax.jit(chunked)(x, kernel, bias), dense(x, kernel, bias), strict=True
  ):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  argnums = (0, 1, 2) if with_bias else (0, 1)

  def scaled(f):  # An outer factor: the backward pass scales the gradients.
    return lambda *a: 3.0 * f(*a)[0]

  grads = jax.jit(jax.grad(scaled(chunked), argnums))(x, kernel, bias)
  expected = jax.grad(scaled(dense), argnums)(x, kernel, bias)
  for ours, ref in zip(grads, expected, strict=True):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_the_weights_and_the_metrics_carry_no_gradient():
  x, kernel, bias, labels, weights = _inputs(1)

  def f(weights, x):
    loss, ce, _ = chunked_loss.linear_cross_entropy(
      x, kernel, bias, labels, weights, chunk=5
    )
    return loss + jnp.sum(ce)

  dweights, dx = jax.grad(f, (0, 1))(weights, x)
  assert not np.any(np.asarray(dweights))
  expected = jax.grad(lambda x: _dense(x, kernel, bias, labels, weights)[0])(x)
  np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_stays_near_float32():
  x, kernel, bias, labels, weights = _inputs(2)
  loss = chunked_loss.linear_cross_entropy(
    x, kernel, bias, labels, weights, dtype=jnp.bfloat16, chunk=8
  )[0]
  grad = jax.grad(
    lambda x: chunked_loss.linear_cross_entropy(
      x, kernel, bias, labels, weights, dtype=jnp.bfloat16, chunk=8
    )[0]
  )(x)
  assert grad.dtype == x.dtype
  ref = _dense(x, kernel, bias, labels, weights)[0]
  assert float(loss) == pytest.approx(float(ref), rel=2e-2)


def test_bad_shapes_and_chunks_are_refused():
  x, kernel, bias, labels, weights = _inputs()
  with pytest.raises(ValueError, match="chunk"):
    chunked_loss.linear_cross_entropy(x, kernel, bias, labels, weights, chunk=0)
  with pytest.raises(ValueError, match="tokens"):
    chunked_loss.linear_cross_entropy(x[None], kernel, bias, labels, weights)
