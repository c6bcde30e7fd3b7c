"""DiT on CIFAR-10 pixels, the paper's recipe (method_spec 2.2, Table 2).

DiT-S/2 (12 layers, width 384, 6 heads, patch 2: 256 tokens), B=3 (4 layers
each), gamma 0.05, AdamW 1e-4 constant, batch 512, 100 epochs (x B for
DiffusionBlocks), 10% label dropout; 50 Euler steps, guidance 2.0. The paper
reports FID 37.20 (DiffusionBlocks) against 39.83 (end to end).

FID uses the standard Inception-v3 pool features: download pytorch-fid's FID
weights once (no torch needed to read them),
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth,
and pass their path as --config.eval.inception_weights (or sample without
FID: --config.eval.feature_network=none).

  tfds build cifar10 --file_format=array_record   # once, needs TensorFlow
  python -m dblocks_jax.main --config=configs/dit_cifar10.py --workdir=runs/dit_c10 \\
    --config.eval.inception_weights=/data/pt_inception-2015-12-05-6726825d.pth

Arguments: smoke, e2e, variant=S/2, epochs=N (default 100).
"""

from configs import common, images


def get_config(arg=None):
  args = common.parse_arg(arg, variant="S/2", epochs=100)
  c = images.paper_dit(
    "cifar10", variant=args.variant, epochs=args.epochs, learning_rate=1e-4
  )
  return common.finish(c, args, images.as_dit_smoke)  # Smoke: no FID.
