"""ViT on Fashion-MNIST from the local IDX files (dataset-fashion-mnist).

A CPU-sized version of the CIFAR recipe: 6 layers, width 64, 4 heads,
MLP 256, patch 7 on 28x28 grey images (17 tokens), B=3 (2 layers each),
gamma 0.05, AdamW 2e-3 cosine to 5e-5, batch 128, 15 baseline epochs.
The block-wise run takes B x the steps of the baseline (same number of
layer evaluations).

  apt-get install dataset-fashion-mnist
  python -m dblocks_jax.main --config=configs/vit_fashion_mnist.py --workdir=runs/fm
  python -m dblocks_jax.main --config=configs/vit_fashion_mnist.py:e2e --workdir=runs/fm_e2e

Arguments: smoke, e2e, tfds (read TFDS fashion_mnist instead of IDX files),
epochs=N (baseline epochs; default 15), tuned (the settings that bring
DiffusionBlocks within 1.5 points of the baseline in docs/results.md: CLS
readout, log-uniform sigma within blocks, layers (4, 1, 1), the argmax row
of the normalised table as the hand-off estimate; the first block then holds
4 of the 6 layers, so the block step saves less memory).

  python -m dblocks_jax.main --config=configs/vit_fashion_mnist.py:tuned --workdir=runs/fm_tuned
"""

from configs import common, images


def get_config(arg=None):
  args = common.parse_arg(arg, tfds=False, epochs=15, tuned=False)
  dataset = "fashion_mnist" if args.tfds else "fashion_mnist_idx"
  c = images.vit_classification(
    **images.image_data(dataset),
    num_layers=6,
    width=64,
    num_heads=4,
    mlp_dim=256,
    patch_size=7,
    num_blocks=3,
    epochs=args.epochs,
    batch_size=128,
    learning_rate=2e-3,
    warmup_epochs=0.5,
  )
  c.model.cond_dim = 32
  c.data.crop_padding = 2
  c.eval_batch_size = 1000
  c.log_every_steps = 200
  c.eval_every_steps = 3 * c.steps_per_epoch * 3  # Every 3 baseline epochs.
  if args.tuned:
    c.model.readout_token = "cls"
    c.blocks.sigma_sampling = "log_uniform"
    c.blocks.layer_distribution = (4, 1, 1)
    c.sampler.normalized_table = True
    c.sampler.estimate = "hard"
  return common.finish(c, args, images.as_smoke)
