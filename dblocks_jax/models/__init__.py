"""Model families: ViT classification, DiT generation (LMs follow), and the
SD VAE for latent diffusion."""

from dblocks_jax.models import dit, vae, vae_weights, vit
from dblocks_jax.models.vit import BaselineViT, DiffusionReadout, ViTStem

__all__ = [
  "BaselineViT",
  "DiffusionReadout",
  "ViTStem",
  "dit",
  "vae",
  "vae_weights",
  "vit",
]
