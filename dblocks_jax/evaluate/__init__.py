"""Evaluation of generators: sampling, image grids, FID (accuracy is the
classification task's own `evaluate`)."""

from dblocks_jax.evaluate.fid import frechet_distance, statistics
from dblocks_jax.evaluate.generation import (
  evaluate_samples,
  generate,
  image_grid,
)
from dblocks_jax.evaluate.pixels import SamplePixels, to_pixels

__all__ = [
  "SamplePixels",
  "evaluate_samples",
  "frechet_distance",
  "generate",
  "image_grid",
  "statistics",
  "to_pixels",
]
