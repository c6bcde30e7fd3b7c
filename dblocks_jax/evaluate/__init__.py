"""Evaluation of generators: sampling, image grids, FID (accuracy is the
classification task's own `evaluate`); means over seeds with intervals and
paired verdicts (`intervals`)."""

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
  "evaluate_samples",
  "frechet_distance",
  "generate",
  "image_grid",
  "mean_interval",
  "paired_difference",
  "statistics",
  "to_pixels",
  "verdict",
]
