"""Evaluation of generators: sampling, image grids, FID (accuracy is the
classification task's own `evaluate`); means over seeds with intervals and
paired verdicts (`intervals`); the diversity of generated text and
perplexity at a matched diversity (`diversity`)."""

from dblocks_jax.evaluate.diversity import (
  distinct_ngrams,
  perplexity_at_diversity,
)
from dblocks_jax.evaluate.fid import frechet_distance, statistics
from dblocks_jax.evaluate.generation import (
  evaluate_samples,
  generate,
  image_grid,
)
from dblocks_jax.evaluate.intervals import (
  Interval,
  mean_interval,
  paired_difference,
  verdict,
)
from dblocks_jax.evaluate.pixels import SamplePixels, to_pixels

__all__ = [
  "Interval",
  "SamplePixels",
  "distinct_ngrams",
  "evaluate_samples",
  "frechet_distance",
  "generate",
  "image_grid",
  "mean_interval",
  "paired_difference",
  "perplexity_at_diversity",
  "statistics",
  "to_pixels",
  "verdict",
]
