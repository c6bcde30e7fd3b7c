"""Model families' networks: the ViT classifier, the DiT generator, the
masked-diffusion token DiT, the Llama-style autoregressive LM, the
recurrent-depth LM, the SD VAE for latent diffusion and the FID
Inception-v3 (import the submodule you need: `dblocks_jax.models.vit`,
`.dit`, `.mdm`, `.ar`, `.recurrent`, `.vae`, `.inception`)."""
