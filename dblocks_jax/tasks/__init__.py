"""Tasks: what a model family trains (the loss of a block) and how it infers
(routed sampling), apart from the networks and the engine."""

from dblocks_jax.tasks.autoregressive import CausalLM, NextTokenDiffusion
from dblocks_jax.tasks.base import Sampler, Task, accuracy
from dblocks_jax.tasks.classification import (
  ClassifierHead,
  DiffusionClassification,
  EndToEndClassification,
)
from dblocks_jax.tasks.generation import DiffusionGeneration
from dblocks_jax.tasks.masked_diffusion import MaskedDiffusion
from dblocks_jax.tasks.recurrent_depth import RecurrentDepthLM

__all__ = [
  "CausalLM",
  "ClassifierHead",
  "DiffusionClassification",
  "DiffusionGeneration",
  "EndToEndClassification",
  "MaskedDiffusion",
  "NextTokenDiffusion",
  "RecurrentDepthLM",
  "Sampler",
  "Task",
  "accuracy",
]
