"""The continuous-time loss of masked diffusion (MD4), as pure functions.

A sequence x_0 of `length` tokens is masked at time t by replacing each
token, independently, with the mask id with probability 1 - alpha(t). The
negative ELBO per token is (method_spec Eq. 8)

    NELBO = 1/length * Int_0^1 w(t) E_{x_t}[ sum_{i masked} CE_i ] dt,
    w(t) = -alpha'(t) / (1 - alpha(t)),

and DiffusionBlocks splits the integral at the block boundaries: block b's
loss is the same integrand over its own t-interval, so the block losses sum
to the whole NELBO. Bits per character are NELBO / ln 2.

An estimate over [lo, hi] averages the integrand at `num_t` times and
multiplies by hi - lo. With `stratified=True` the times are one uniform
draw in each of `num_t` equal slices of [lo, hi] (lower variance than
independent draws; still unbiased).

Shapes: tokens and x_t are [batch, length] ints, t is [batch], logits are
[batch, length, vocab].
"""

import functools

import jax
import jax.numpy as jnp

from dblocks_jax.diffusion import masking


def mask_tokens(key, tokens, t, mask_id: int, schedule: str = "linear"):
  """x_t: each token replaced by `mask_id` with probability 1 - alpha(t)."""
  keep = masking.alpha(t, schedule)[:, None]
  masked = jax.random.uniform(key, tokens.shape) >= keep
  return jnp.where(masked, mask_id, tokens)


def masked_loss(logits, tokens, x_t, t, mask_id: int, schedule="linear"):
  """The integrand at t, per sequence and per token: w(t) times the summed
  cross-entropy of the masked positions, over `length`. Returns [batch]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  masked = (x_t == mask_id).astype(jnp.float32)
  per_token = jnp.sum(ce * masked, axis=-1) / tokens.shape[-1]
  return masking.loss_weight(t, schedule) * per_token


def times(key, batch: int, num_t: int, lo, hi, stratified: bool = True):
  """[num_t, batch] times in [lo, hi]: one per slice of num_t equal slices
  (stratified), or independent uniform draws."""
  u = jax.random.uniform(key, (num_t, batch))
  if stratified:
    u = (jnp.arange(num_t)[:, None] + u) / num_t
  return lo + (hi - lo) * u


@functools.partial(
  jax.jit,
  static_argnames=("predict", "mask_id", "num_t", "schedule", "stratified"),
)
def nelbo(
  predict,
  key,
  tokens,
  mask_id: int,
  *,
  num_t: int,
  lo=0.0,
  hi=1.0,
  schedule: str = "linear",
  stratified: bool = True,
):
  """The NELBO per token over [lo, hi], per sequence: [batch].

  Args:
    predict: (x_t [batch, length], t [batch]) -> logits
      [batch, length, vocab]; e.g. the block that owns t.
    key: the randomness of the times and the masks.
    num_t: times per sequence.
  """
  t_key, mask_key = jax.random.split(key)
  ts = times(t_key, tokens.shape[0], num_t, lo, hi, stratified)

  def one(carry, inputs):
    t, k = inputs
    x_t = mask_tokens(k, tokens, t, mask_id, schedule)
    return carry + masked_loss(
      predict(x_t, t), tokens, x_t, t, mask_id, schedule
    ), None

  total, _ = jax.lax.scan(
    one,
    jnp.zeros(tokens.shape[0], jnp.float32),
    (ts, jax.random.split(mask_key, num_t)),
  )
  return (hi - lo) * total / num_t
