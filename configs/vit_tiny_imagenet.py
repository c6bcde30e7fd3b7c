"""ViT on Tiny-ImageNet (paper Table 9: 35.32 end-to-end, 36.16 DB, B=2).

12 layers, width 768, 12 heads, MLP 3072, patch 4, B=2 (6 layers each),
AdamW 1e-4, batch 256, 100 epochs (x B for DiffusionBlocks).

  python -m dblocks_jax.main --config=configs/vit_tiny_imagenet.py \
      --workdir=runs/tin --config.data.dir=/data/tiny-imagenet-200

Data: the extracted tiny-imagenet-200 folder (train/ and val/), data.dir.
Arguments: smoke, e2e.
"""

from configs import common, images


def get_config(arg=None):
  args = common.parse_arg(arg)
  c = images.vit_classification(
    **images.image_data("tiny_imagenet"),
    num_layers=12,
    width=768,
    num_heads=12,
    mlp_dim=3072,
    patch_size=4,
    num_blocks=2,
    epochs=100,
    batch_size=256,
    learning_rate=1e-4,
    warmup_epochs=0,
  )
  c.optimizer.schedule = "constant"  # The paper gives a single rate.
  c.data.eval_split = "val"
  c.data.crop_padding = 0
  c.data.random_resized_crop = True  # Official Tiny-ImageNet augmentation.
  return common.finish(c, args, images.as_smoke, _smoke)


def _smoke(c):
  """The smoke run keeps B=2, one layer each."""
  c.blocks.num_blocks = 2
  c.model.num_layers = 2
