"""Model families' networks: the ViT classifier, the DiT generator, the SD
VAE for latent diffusion and the FID Inception-v3 (import the submodule you
need: `dblocks_jax.models.vit`, `.dit`, `.vae`, `.inception`)."""
