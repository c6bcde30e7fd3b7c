"""Flax NNX building blocks shared by the model families."""

from dblocks_jax.nn.adaln import MODULATIONS, AdaLNModulation, modulate
from dblocks_jax.nn.attention import Mlp, SelfAttention
from dblocks_jax.nn.embed import (
  FixedTable,
  NoiseLevelEmbedder,
  PatchEmbed,
  TargetTable,
  patchify,
  sinusoidal_embedding,
)
from dblocks_jax.nn.layers import LayerStack, Stack, TransformerLayer
from dblocks_jax.nn.linen import FromLinen

__all__ = [
  "MODULATIONS",
  "AdaLNModulation",
  "FixedTable",
  "FromLinen",
  "LayerStack",
  "Mlp",
  "NoiseLevelEmbedder",
  "PatchEmbed",
  "SelfAttention",
  "Stack",
  "TargetTable",
  "TransformerLayer",
  "modulate",
  "patchify",
  "sinusoidal_embedding",
]
