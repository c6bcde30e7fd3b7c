"""Pretrained networks and their weight files: the SD VAE of latent
diffusion and the FID Inception-v3, and the readers of the files their
weights come in (.pth, .npz, .safetensors)."""
