"""Evaluation: classification accuracy; sampling and FID for generators."""

from dblocks_jax.evaluate.classification import accuracy, make_classify_fn
from dblocks_jax.evaluate.fid import frechet_distance, statistics
from dblocks_jax.evaluate.generation import (
  evaluate_samples,
  generate,
  image_grid,
  make_sample_fn,
)
from dblocks_jax.evaluate.pixels import SamplePixels, to_pixels

__all__ = [
  "accuracy",
  "evaluate_samples",
  "frechet_distance",
  "generate",
  "image_grid",
  "make_classify_fn",
  "make_sample_fn",
  "SamplePixels",
  "statistics",
  "to_pixels",
]
