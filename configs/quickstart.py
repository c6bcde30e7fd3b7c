"""Quickstart: DiffusionBlocks on scikit-learn's bundled digits, a few minutes
on a laptop CPU, no download. Prints the test accuracy at the end.

  python -m dblocks_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

A 3-layer ViT (width 64, patch 2 on 8x8 images) split into B=3 blocks of one
layer, each trained alone on one noise range; inference chains the blocks as
the 3 steps of an Euler sampler. `:e2e` trains the same-size baseline.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, e2e=False)
  c = common.vit_classification(
    dataset="digits",
    image_shape=(8, 8, 1),
    num_classes=10,
    num_train=1497,
    num_layers=3,
    width=64,
    num_heads=4,
    mlp_dim=128,
    patch_size=2,
    num_blocks=3,
    epochs=60,
    batch_size=64,
    learning_rate=1e-3,
    warmup_epochs=2,
  )
  c.model.cond_dim = 32
  c.model.dropout = 0.0
  c.model.attention_dropout = 0.0
  c.data.crop_padding = 1
  c.data.flip = False  # Digits are not mirror-symmetric.
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  if args.smoke:
    common.as_smoke(c, keep_data=True)
  if args.e2e:
    c = common.as_end_to_end(c)
  return c
