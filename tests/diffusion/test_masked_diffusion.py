"""MD4's continuous-time loss: masking, the integrand, and the ELBO split
over blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dblocks_jax.diffusion import masked_diffusion as md
from dblocks_jax.diffusion import masking

VOCAB, MASK, LENGTH = 27, 27, 32


def _tokens(batch, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, LENGTH), 0, VOCAB)


def test_masking_follows_alpha():
  tokens = _tokens(256)
  for t in (0.0, 0.25, 0.8, 1.0):
    x_t = md.mask_tokens(jax.random.key(1), tokens, jnp.full(256, t), MASK)
    masked = x_t == MASK
    assert abs(float(masked.mean()) - t) < 0.01
    # Unmasked positions keep their tokens.
    assert bool(jnp.all(jnp.where(masked, True, x_t == tokens)))


def test_stratified_times_cover_each_slice():
  t = md.times(jax.random.key(0), 5, 4, 0.2, 0.6)
  assert t.shape == (4, 5)
  slices = np.floor((np.asarray(t) - 0.2) / 0.1)
  np.testing.assert_array_equal(slices, np.repeat(np.arange(4)[:, None], 5, 1))


def _constant_predictor():
  """The same distribution p at every position, whatever x_t and t."""
  logits = jax.random.normal(jax.random.key(7), (VOCAB + 1,))

  def predict(x_t, t):
    return jnp.broadcast_to(logits, (*x_t.shape, VOCAB + 1))

  log_p = jax.nn.log_softmax(logits)
  return predict, log_p


@pytest.mark.parametrize("schedule", masking.SCHEDULES)
def test_a_constant_model_has_a_known_nelbo_split_equally(schedule):
  """E[#masked] = length (1 - alpha(t)), so the integrand is -alpha'(t) x
  the mean CE: the NELBO is the mean CE, and each block of the equal-mass
  partition holds exactly 1/B of it."""
  predict, log_p = _constant_predictor()
  tokens = _tokens(512)
  expected = float(-log_p[tokens].mean())
  whole = md.nelbo(
    predict, jax.random.key(2), tokens, MASK, num_t=64, schedule=schedule
  )
  assert float(whole.mean()) == pytest.approx(expected, rel=0.01)
  bounds = masking.Masking(schedule).boundaries(3)
  for b in range(3):
    part = md.nelbo(
      predict,
      jax.random.key(3 + b),
      tokens,
      MASK,
      num_t=64,
      lo=bounds[b + 1],
      hi=bounds[b],
      schedule=schedule,
    )
    assert float(part.mean()) == pytest.approx(expected / 3, rel=0.02)


def test_block_losses_sum_to_the_whole_range_estimate():
  """A fixed model that reads x_t and t: the sum of the three blocks'
  estimates matches the whole-range estimate within 4 standard errors."""
  w = jax.random.normal(jax.random.key(11), (VOCAB + 1, VOCAB + 1))
  v = jax.random.normal(jax.random.key(12), (VOCAB + 1,))

  def predict(x_t, t):
    return w[x_t] + 3.0 * t[:, None, None] * v

  tokens = _tokens(2048, seed=5)
  whole = md.nelbo(predict, jax.random.key(0), tokens, MASK, num_t=16)
  bounds = masking.Masking().boundaries(3)
  parts = [
    md.nelbo(
      predict,
      jax.random.key(1 + b),
      tokens,
      MASK,
      num_t=16,
      lo=bounds[b + 1],
      hi=bounds[b],
    )
    for b in range(3)
  ]
  blockwise = sum(parts)
  stderr = float(
    jnp.sqrt(whole.var() / whole.size + blockwise.var() / blockwise.size)
  )
  gap = abs(float(whole.mean() - blockwise.mean()))
  assert gap < 4 * stderr, (
    float(whole.mean()),
    float(blockwise.mean()),
    stderr,
  )
  assert stderr < 0.01 * float(whole.mean())  # The check has teeth.
