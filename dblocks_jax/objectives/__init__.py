"""Objectives: the noise process and the loss, apart from the networks."""

from dblocks_jax.objectives.classification import (
  DiffusionClassification,
  EndToEndClassification,
)
from dblocks_jax.objectives.generation import DiffusionGeneration

__all__ = [
  "DiffusionClassification",
  "DiffusionGeneration",
  "EndToEndClassification",
]
