"""Model families' networks: the ViT classifier, the DiT generator, the
masked-diffusion token DiT, the Llama-style autoregressive LM and the
recurrent-depth LM (import the submodule you need: `dblocks_jax.models.vit`,
`.dit`, `.mdm`, `.ar`, `.recurrent`); `pretrained/` holds the SD VAE of
latent diffusion, the FID Inception-v3 and their weight-file readers."""
