"""Model families: ViT classification, DiT generation (LMs follow), the
SD VAE for latent diffusion, and the FID Inception-v3 for evaluation."""

from dblocks_jax.models import (
  dit,
  inception,
  inception_weights,
  torch_files,
  vae,
  vae_weights,
  vit,
)
from dblocks_jax.models.inception import InceptionV3
from dblocks_jax.models.inception_weights import load_inception
from dblocks_jax.models.vit import BaselineViT, DiffusionReadout, ViTStem

__all__ = [
  "BaselineViT",
  "DiffusionReadout",
  "InceptionV3",
  "ViTStem",
  "dit",
  "inception",
  "inception_weights",
  "load_inception",
  "torch_files",
  "vae",
  "vae_weights",
  "vit",
]
