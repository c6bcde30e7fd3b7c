"""Objectives: the noise process and the loss, apart from the networks."""

from dblocks_jax.objectives.classification import (
  DiffusionClassification,
  EndToEndClassification,
)

__all__ = ["DiffusionClassification", "EndToEndClassification"]
