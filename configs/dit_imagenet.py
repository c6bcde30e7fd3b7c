"""DiT-L/2 on ImageNet 256 latents, the paper's recipe (method_spec 2.2).

DiT-L/2 (24 layers, width 1024, 16 heads, patch 2) on 32x32x4 SD-VAE
latents (256 tokens), B=3 (8 layers each), gamma 0.05, AdamW 5e-5 constant,
batch 512, 100 epochs (x B for DiffusionBlocks), 10% label dropout over 1,000
classes; 50 Euler steps, guidance 2.0.

  python -m dblocks_jax.main --config=configs/dit_imagenet.py --mode=memory --workdir=runs/mem_dit
  # Once: ImageNet (TFDS imagenet2012, prepared as ArrayRecord) -> latents.
  python -m dblocks_jax.main --config=configs/dit_imagenet.py --mode=encode --workdir=runs/encode \\
    --config.data.dir=/data/imagenet_latents --config.encode.vae_weights=/data/sd-vae-ft-ema/diffusion_pytorch_model.safetensors
  python -m dblocks_jax.main --config=configs/dit_imagenet.py --workdir=runs/dit_in \\
    --config.data.dir=/data/imagenet_latents --config.encode.vae_weights=... \\
    --config.eval.inception_weights=/data/pt_inception-2015-12-05-6726825d.pth
  python -m dblocks_jax.main --config=configs/dit_imagenet.py --workdir=runs/dit_in --mode=sample ...

`--mode=memory` needs no data. The encode mode writes 256x256 centre crops
and their mirrors as SD-VAE posteriors (mean and std, float16) in resumable
shards; training samples the posterior and scales it by 0.18215; sampling
decodes with the same VAE.

FID uses the standard Inception-v3 pool features: download pytorch-fid's FID
weights once,
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth,
and pass their path as --config.eval.inception_weights (or sample without
FID: --config.eval.feature_network=none). The evaluation decodes the sampled
latents with the same VAE and compares their pixels with the 50,000 images
of TFDS imagenet2012 `validation`, centre-cropped to 256 as the encode mode
crops (eval.reference_data="encode", eval.reference_split="validation");
their statistics are computed once and cached. ADM's reference batch, which
DiT reports against, is computed over the training split instead:
--config.eval.reference_split=train (1.28M images to read once).

Arguments: smoke, e2e, variant=L/2, epochs=N (default 100).
"""

from configs import common, images


def get_config(arg=None):
  args = common.parse_arg(arg, variant="L/2", epochs=100)
  c = images.paper_dit(
    "imagenet_latents",
    variant=args.variant,
    epochs=args.epochs,
    learning_rate=5e-5,
  )
  c.data.flip = False  # Mirrors are encoded as views (encode.flip).
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  images.latent_encoding(
    c,
    images="imagenet2012",
    image_size=256,
    num_classes=1000,
    splits=("train",),
  )
  # FID of decoded samples against validation crops (see the docstring).
  c.eval.reference_split = "validation"
  c.eval.num_samples = 1_000
  # Smoke: no FID.
  return common.finish(c, args, images.as_dit_smoke, images.as_latent_smoke)
