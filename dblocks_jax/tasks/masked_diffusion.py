"""Masked-diffusion language modelling (MD4; method_spec 2.3) as a task.

Training: block b draws t in its widened t-interval, masks each token with
probability 1 - alpha(t), and its loss is the continuous-time integrand
w(t) x (cross-entropy summed over the masked positions) / length, with
w(t) = -alpha'(t) / (1 - alpha(t)) (`diffusion.masked_diffusion`). The
end-to-end MDM baseline is the same task over one block of all layers.

Likelihood: `nelbo` estimates the negative ELBO of each sequence with every
block integrating over its own nominal t-interval (so every t is routed to
the block that owns it), `num_t` stratified times per block; the blocks'
terms sum to the whole integral. Bits per character are NELBO / ln 2.

Sampling (`predict`): MD4's ancestral sampler. From all-[MASK] (or a
partly masked prompt), step i goes from time t_i to t_{i+1} (the last to 0):
each still-masked token is revealed with probability
(alpha(t_{i+1}) - alpha(t_i)) / (1 - alpha(t_i)), its value drawn from the
model's distribution at t_i; revealed tokens never change. The grid is
independent of B and each step runs the block that owns its interval.
Categorical draws are in float32 (MD4 notes that low-precision Gumbel draws
reduce diversity; float64 would need jax_enable_x64).

Shapes: tokens [batch, length] int, t [batch].
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.diffusion import masked_diffusion, masking
from dblocks_jax.tasks.batches import Field

METHOD = "ancestral"


def token_denoise(parts, x_t, t, *, time_scale: float):
  """Logits [batch, length, vocab] of the clean tokens given x_t and t.

  Parts:
    stem         x_t [b, length] -> h [b, length, width]
    noise_embed  time_scale * t [b] -> cond [b, width]
    layers       (h, cond) -> h: the block's layers
    readout      (h, cond) -> logits [b, length, vocab]
  """
  cond = parts["noise_embed"](time_scale * t)
  h = parts["layers"](parts["stem"](x_t), cond)
  return parts["readout"](h, cond)


@dataclasses.dataclass(frozen=True)
class MaskedDiffusion:
  """The DiffusionBlocks masked-diffusion task (a `Task`).

  Batches are {"tokens": [b, length] int in [0, vocab_size)}. The [MASK] id
  is `vocab_size`.

  Attributes:
    vocab_size: clean symbols.
    schedule: the masking schedule alpha(t): "linear" (MD4) or "cosine".
    time_scale: t is fed to the time embedder as time_scale x t.
    denoise: `denoise(parts, x_t, t, *, time_scale) -> logits`;
      `token_denoise` by default.
  """

  vocab_size: int
  schedule: str = "linear"
  time_scale: float = 1000.0
  denoise: Callable = token_denoise

  def __post_init__(self):
    if self.schedule not in masking.SCHEDULES:
      raise ValueError(
        f"schedule={self.schedule!r} is unknown; choose one of"
        f" {masking.SCHEDULES}."
      )

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  def logits(self, parts, x_t, t):
    return self.denoise(parts, x_t, t, time_scale=self.time_scale)

  def batch_fields(self, parts, example) -> dict[str, Field]:
    """Tokens [batch, length] (any length the model's positions cover):
    ids below vocab_size, or vocab_size itself ([MASK], in the prompts
    `predict` completes)."""
    del parts, example
    return {
      "tokens": Field(
        "int",
        rank=1,
        num_classes=self.vocab_size + 1,
        meaning="token ids",
        varying=(0,),
      )
    }

  def loss(self, parts, batch, level, key, *, train: bool = True):
    """batch: tokens [b, length]; level: t [b]."""
    del train  # No dropout in this model.
    tokens = batch["tokens"]
    x_t = masked_diffusion.mask_tokens(
      key, tokens, level, self.mask_id, self.schedule
    )
    per_sequence = masked_diffusion.masked_loss(
      self.logits(parts, x_t, level),
      tokens,
      x_t,
      level,
      self.mask_id,
      self.schedule,
    )
    masked = jnp.mean((x_t == self.mask_id).astype(jnp.float32))
    return jnp.mean(per_sequence), {"masked_fraction": masked}

  def nelbo(
    self,
    parts_for_block,
    tokens,
    key,
    *,
    boundaries,
    num_t: int,
    stratified: bool = True,
  ):
    """The NELBO per token (nats) of each sequence, split by block.

    Args:
      parts_for_block: block -> its modules.
      tokens: [b, length] clean sequences.
      boundaries: [B + 1] descending times (the plan's): block b integrates
        over [boundaries[b + 1], boundaries[b]].
      num_t: stratified times per block and sequence.

    Returns:
      [b, B]: block b's share of each sequence's NELBO (sum over the last
      axis for the whole).
    """
    boundaries = np.asarray(boundaries, np.float64)
    shares = []
    for b in range(len(boundaries) - 1):
      parts = parts_for_block(b)
      shares.append(
        masked_diffusion.nelbo(
          lambda x_t, t, parts=parts: self.logits(parts, x_t, t),
          jax.random.fold_in(key, b),
          tokens,
          self.mask_id,
          num_t=num_t,
          lo=float(boundaries[b + 1]),
          hi=float(boundaries[b]),
          schedule=self.schedule,
          stratified=stratified,
        )
      )
    return jnp.stack(shares, axis=-1)

  def predict(self, parts_for_block, batch, key, *, sampler):
    """Ancestral sampling: batch {"tokens": [b, length]} with [MASK] at
    the positions to generate (all of them for unconditional samples).

    Returns:
      [b, length] int tokens, none masked.
    """
    if sampler is None or sampler.method != METHOD:
      raise ValueError(
        "MaskedDiffusion needs the routed ancestral sampler; pass"
        " sampler=Sampler.of(plan, num_steps, method='ancestral')."
      )
    starts = np.asarray(sampler.levels, np.float64)
    stops = np.append(starts[1:], 0.0)
    reveal = (
      masking.alpha(stops, self.schedule) - masking.alpha(starts, self.schedule)
    ) / (1.0 - masking.alpha(starts, self.schedule))
    x = batch["tokens"]
    for block, first, last in _runs(np.asarray(sampler.blocks)):
      parts = parts_for_block(block)
      times = jnp.asarray(starts[first:last], jnp.float32)
      probs = jnp.asarray(reveal[first:last], jnp.float32)

      def step(i, carry, parts=parts, times=times, probs=probs):
        x, key = carry
        key, draw_key, reveal_key = jax.random.split(key, 3)
        t = jnp.full((x.shape[0],), times[i])
        draws = jax.random.categorical(draw_key, self.logits(parts, x, t))
        revealed = (x == self.mask_id) & (
          jax.random.uniform(reveal_key, x.shape) < probs[i]
        )
        return jnp.where(revealed, draws.astype(x.dtype), x), key

      x, key = jax.lax.fori_loop(0, last - first, step, (x, key))
    return x


def _runs(blocks: np.ndarray):
  """(block, first, last) of each run of equal blocks along the grid."""
  first = 0
  for i in range(1, len(blocks) + 1):
    if i == len(blocks) or blocks[i] != blocks[first]:
      yield int(blocks[first]), first, i
      first = i
