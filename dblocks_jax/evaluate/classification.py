"""Accuracy of a trained classifier: block-wise (routed) or baseline."""

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.evaluate.routing import parts_for_block_fn, sampler_grid


def make_classify_fn(experiment, graphdefs, config):
  """A jitted `classify(state, images, key) -> logits [batch, classes]`.

  Block-wise: routed sampling over `config.sampler.num_steps` grid points
  (0 = B, the official default), each step using only its routed block. The
  grid is computed from the config, never from the checkpoint, so any number
  of steps works with any checkpoint.
  """
  if not experiment.blockwise:

    def classify_baseline(state, images, key):
      del key
      parts = parts_lib.merge(graphdefs.shared, state["shared"]["params"])
      return experiment.objective.classify(parts, images)

    return jax.jit(classify_baseline)

  sigmas, blocks = sampler_grid(experiment, config)
  s = config.sampler

  def classify(state, images, key):
    return experiment.objective.classify(
      parts_for_block_fn(graphdefs, state),
      images,
      key,
      sigmas=sigmas,
      blocks=blocks,
      method=s.method,
      guidance_scale=s.guidance_scale,
    )

  return jax.jit(classify)


def accuracy(classify_fn, state, batches: Iterable[dict], key) -> dict:
  """Top-1 accuracy over masked eval batches (padding excluded)."""
  correct, total = 0, 0
  for i, batch in enumerate(batches):
    logits = classify_fn(
      state, jnp.asarray(batch["image"]), jax.random.fold_in(key, i)
    )
    predictions = np.asarray(jnp.argmax(logits, -1))
    mask = np.asarray(batch["mask"], bool)
    correct += int(np.sum((predictions == batch["label"]) & mask))
    total += int(mask.sum())
  return {"accuracy": correct / max(total, 1), "num_examples": total}
