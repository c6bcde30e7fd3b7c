"""DiT on Fashion-MNIST from the local IDX files (dataset-fashion-mnist).

DiT-S/4 by default (12 layers, width 384, 6 heads, patch 4: 49 tokens on
28x28 grey images), B=3 (4 layers each), gamma 0.05, AdamW 1e-4 constant,
batch 128, 10% label dropout; 50 Euler steps with guidance 2.0. Durations
count baseline epochs; the block-wise run takes B x the steps (the same
number of layer evaluations).

  apt-get install dataset-fashion-mnist
  python -m dblocks_jax.main --config=configs/vit_fashion_mnist.py:e2e --workdir=runs/fm_e2e
  python -m dblocks_jax.main --config=configs/dit_fashion_mnist.py --workdir=runs/dit_fm \\
    --config.eval.classifier_workdir=runs/fm_e2e
  python -m dblocks_jax.main --config=configs/dit_fashion_mnist.py --workdir=runs/dit_fm --mode=sample

FID is measured in the feature space of the end-to-end ViT classifier of
`vit_fashion_mnist.py:e2e` (eval.classifier_workdir), against the test split.

Arguments: smoke, e2e, variant=S/4 (any of S, B, L, XL with patch 2, 4, 8),
epochs=N (baseline epochs; default 50, 3 with cpu), tfds (read TFDS fashion_mnist),
cpu (the CPU-sized comparison of docs/results.md: a DiT of 6 layers, width
64, 4 heads, patch 4, i.e. 2 layers per block; learning rate 5e-4; 3
baseline epochs; FID on 4,000 samples).
"""

from configs import common, images


def get_config(arg=None):
  args = common.parse_arg(arg, variant="S/4", epochs=0, tfds=False, cpu=False)
  dataset = "fashion_mnist" if args.tfds else "fashion_mnist_idx"
  epochs = args.epochs or (3 if args.cpu else 50)
  c = images.dit_generation(
    **images.image_data(dataset),
    variant=args.variant,
    num_blocks=3,
    epochs=epochs,
    batch_size=128,
    learning_rate=5e-4 if args.cpu else 1e-4,
  )
  c.log_every_steps = 200
  if args.cpu:
    c.model.variant = "custom"
    c.model.num_layers, c.model.width, c.model.num_heads = 6, 64, 4
    c.eval.num_samples = 4_000
  return common.finish(c, args, images.as_dit_smoke)
