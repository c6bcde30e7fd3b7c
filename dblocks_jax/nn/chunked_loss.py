"""A vocabulary head and its cross-entropy over token chunks: the [tokens,
vocab] logits are never held whole.

A language model's last Linear maps [tokens, width] to [tokens, vocab]
logits; with a 32K vocabulary those logits, their softmax and their
gradient (float32) outweigh a transformer layer's activations many times
over. `linear_cross_entropy` computes

  loss = sum_i w_i CE(x_i @ kernel + bias, label_i)

in a `lax.scan` over chunks of `chunk` tokens: one [chunk, vocab] tile of
logits exists at a time. Being a weighted sum, the loss's gradient is the
incoming scalar times a fixed sum, so the forward pass of the `custom_vjp`
computes the gradients of x, the kernel and the bias as it goes (dlogits =
w (softmax - onehot), per chunk) and the backward pass only scales them:
no logits are kept and none are computed again (the head's three matmuls,
as the dense head runs them). Without differentiation the primal runs the
same scan without the gradients.

The weights w carry no gradient (the tasks' EDM weights and averaging
factors are data); the per-token cross-entropy and argmax hits come back
beside the loss for the metrics, under stop_gradient.

The head's matmul is the model's Linear's (`nn.linear.matmul`: operands in
`dtype`, float32 accumulate and logits), so the loss equals the dense
path's to float rounding; the backward products run in `dtype` as the
Linear's do, with the kernel's gradient summed over the chunks in float32.
Reverse mode only (`jax.grad`), as every `custom_vjp`.

Shapes: x [tokens, width]; kernel [width, vocab]; bias [vocab] or None;
labels [tokens] int; weights [tokens] float.
"""

import functools

import jax
import jax.numpy as jnp

from dblocks_jax.nn import linear

F32 = jnp.float32


def linear_cross_entropy(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array | None,
  labels: jax.Array,
  weights: jax.Array,
  *,
  dtype=F32,
  chunk: int = 2048,
):
  """sum_i weights_i CE(x_i @ kernel + bias, labels_i), chunked (see the
  module docstring).

  Returns (loss scalar, ce [tokens], hits [tokens] bool: argmax == label),
  ce and hits without gradient.
  """
  if (
    x.ndim != 2 or labels.shape != x.shape[:1] or weights.shape != labels.shape
  ):
    raise ValueError(
      f"x [tokens, width], labels and weights [tokens], got {x.shape},"
      f" {labels.shape} and {weights.shape}."
    )
  if chunk < 1:
    raise ValueError(f"chunk={chunk} must be at least 1.")
  n = x.shape[0]
  chunk = min(chunk, n)
  pad = -n % chunk
  xs = _chunks(x, chunk, pad)
  ys = _chunks(labels, chunk, pad)
  ws = _chunks(weights.astype(F32), chunk, pad)  # Padding weighs 0.
  loss, ce, hits = _loss(jnp.dtype(dtype), xs, kernel, bias, ys, ws)
  ce, hits = (t.reshape(-1)[:n] for t in (ce, hits))
  return loss, jax.lax.stop_gradient(ce), hits


def _chunks(x: jax.Array, chunk: int, pad: int) -> jax.Array:
  """[n, ...] -> [(n + pad) / chunk, chunk, ...], zero padded."""
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((-1, chunk) + x.shape[1:])


def _logits(x, kernel, bias, dtype) -> jax.Array:
  """The Linear's logits: x [c, width] -> float32 [c, vocab]."""
  logits = linear.matmul(x, kernel, dtype)
  if bias is not None:
    logits = logits + bias.astype(F32)
  return logits


def _stats(logits, labels):
  """-> (log-sum-exp [c], CE [c], hits [c]) of float32 logits [c, vocab]."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  hits = jnp.argmax(logits, axis=-1) == labels
  return lse, lse - picked, hits


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _loss(dtype, xs, kernel, bias, ys, ws):
  def body(total, chunk):
    x, y, w = chunk
    _, ce, hits = _stats(_logits(x, kernel, bias, dtype), y)
    return total + jnp.sum(w * ce), (ce, hits)

  total, (ce, hits) = jax.lax.scan(body, jnp.zeros((), F32), (xs, ys, ws))
  return total, ce, hits


def _loss_fwd(dtype, xs, kernel, bias, ys, ws):
  kernel_c = kernel.astype(dtype)

  def body(carry, chunk):
    total, dkernel, dbias = carry
    x, y, w = chunk
    logits = _logits(x, kernel, bias, dtype)
    lse, ce, hits = _stats(logits, y)
    probs = jnp.exp(logits - lse[:, None])
    onehot = jnp.arange(logits.shape[-1])[None] == y[:, None]
    dlogits = w[:, None] * (probs - onehot)  # d loss / d logits, float32.
    d_c, x_c = dlogits.astype(dtype), x.astype(dtype)
    dx = jax.lax.dot_general(
      d_c, kernel_c, (((1,), (1,)), ((), ())), preferred_element_type=dtype
    )
    dkernel = dkernel + jax.lax.dot_general(
      x_c, d_c, (((0,), (0,)), ((), ())), preferred_element_type=F32
    )
    if dbias is not None:
      dbias = dbias + jnp.sum(dlogits, 0)
    carry = total + jnp.sum(w * ce), dkernel, dbias
    return carry, (dx.astype(x.dtype), ce, hits)

  init = (
    jnp.zeros((), F32),
    jnp.zeros(kernel.shape, F32),
    None if bias is None else jnp.zeros(bias.shape, F32),
  )
  (total, dkernel, dbias), (dxs, ce, hits) = jax.lax.scan(
    body, init, (xs, ys, ws)
  )
  grads = (dxs, dkernel.astype(kernel.dtype))
  grads += (None if bias is None else dbias.astype(bias.dtype),)
  return (total, ce, hits), (grads, ys, ws)


def _loss_bwd(dtype, residuals, cotangents):
  del dtype
  (dxs, dkernel, dbias), ys, ws = residuals
  g = cotangents[0]  # The ce and hits outputs leave under stop_gradient.
  scale = lambda t: None if t is None else (g * t).astype(t.dtype)  # noqa: E731
  zero_labels = jnp.zeros(ys.shape, jax.dtypes.float0)
  return (
    scale(dxs),
    scale(dkernel),
    scale(dbias),
    zero_labels,
    jnp.zeros_like(ws),
  )


_loss.defvjp(_loss_fwd, _loss_bwd)
