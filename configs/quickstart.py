"""Quickstart: DiffusionBlocks against its end-to-end baseline on
scikit-learn's bundled digits, a few minutes on a laptop CPU, no download.

  python -m dblocks_jax.main --config=configs/quickstart.py --workdir=runs/quickstart --mode=compare

A 4-layer ViT (width 64, patch 2 on 8x8 images) split into B=3 blocks of
(2, 1, 1) layers, each trained alone on its own noise range; inference
chains the blocks as the 3 steps of an Euler sampler. `--mode=compare` also
trains the same ViT end to end for the same number of layer evaluations
(120 epochs of 23 steps; the block-wise run takes 3 x the steps, each
through one block) and prints test accuracy, step memory and wall time of
both. `:e2e` is the baseline alone.

The settings are documented switches chosen for a classifier, where the
first sampler step decides the class (docs/results.md, "Quickstart"):

- `model.readout_token="cls"` (the paper's text; the official code reads the
  noisy-label token, which learns more slowly);
- `blocks.partition="explicit"`, boundaries (80, 2, 0.2, 0.002): block 0
  trains only where the noisy label hides the class (sigma >= 2), which is
  where the sampler uses it (sigma = 80), instead of the equi-probable
  [0.5, 80] where half its samples read the label off the noise;
- `blocks.layer_distribution=(2, 1, 1)`: depth where the class is decided
  (the block step then holds 2 of the 4 layers);
- `blocks.sigma_sampling="log_uniform"`: every part of a block's range
  alike;
- `sampler.normalized_table=True`, `sampler.estimate="hard"`: hand the next
  block the predicted class's unit-norm row, the kind of target it was
  trained on.

`:official` restores the official code's settings for the same model
(equal split of 3 layers, label readout, equi-probable partition, log-normal
sigma, the soft estimate on the raw table), which reaches far less here.
"""

from configs import common, images


def get_config(arg=None):
  args = common.parse_arg(arg, official=False)
  c = images.vit_classification(
    **images.image_data("digits"),
    num_layers=4,
    width=64,
    num_heads=4,
    mlp_dim=128,
    patch_size=2,
    num_blocks=3,
    epochs=120,
    batch_size=64,
    learning_rate=1e-3,
    warmup_epochs=2,
  )
  c.model.cond_dim = 32
  c.model.dropout = 0.0
  c.model.attention_dropout = 0.0
  c.data.crop_padding = 1
  c.data.flip = False  # Digits are not mirror-symmetric.
  c.log_every_steps = 500
  c.checkpoint_every_steps = 2000
  if args.official:
    c.model.num_layers = 3
    c.total_steps = 60 * c.steps_per_epoch * 3
    c.optimizer.warmup_steps = 2 * c.steps_per_epoch * 3
  else:
    c.note = (
      "classifier settings (configs/quickstart.py): CLS readout, block 0"
      " trained on sigma >= 2 with 2 of the 4 layers, log-uniform sigma,"
      " the argmax row handed between blocks"
    )
    c.model.readout_token = "cls"
    c.blocks.partition = "explicit"
    c.blocks.boundaries = (80.0, 2.0, 0.2, 0.002)
    c.blocks.layer_distribution = (2, 1, 1)
    c.blocks.sigma_sampling = "log_uniform"
    c.sampler.normalized_table = True
    c.sampler.estimate = "hard"
  return common.finish(c, args, _smoke)


def _smoke(c):
  """The smoke run on the digits themselves (bundled, no download)."""
  images.as_smoke(c, keep_data=True)
