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

from configs import common


def get_config(arg=None):
  args = common.parse_arg(
    arg, smoke=False, e2e=False, variant="S/2", epochs=100
  )
  c = common.dit_generation(
    dataset="cifar10",
    image_shape=(32, 32, 3),
    num_classes=10,
    num_train=50_000,
    variant=args.variant,
    num_blocks=3,
    epochs=args.epochs,
    batch_size=512,
    learning_rate=1e-4,
  )
  c.eval.feature_network = "inception"
  if args.smoke:
    common.as_dit_smoke(c)  # No FID.
  if args.e2e:
    c = common.as_end_to_end(c)
  return c
