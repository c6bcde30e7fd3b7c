"""ViT on CIFAR-100, the paper's recipe (Table 1: 60.25 end-to-end, 59.30 DB).

12 layers, width 128, 4 heads, MLP 3072, patch 4, B=3 (4 layers each),
gamma 0.05, AdamW 5e-4 cosine to 5e-5, 10 warmup epochs, batch 128,
500 epochs (x B for DiffusionBlocks), flip + padded crop (+ RandAugment).

  python -m dblocks_jax.main --config=configs/vit_cifar100.py --workdir=runs/c100
  python -m dblocks_jax.main --config=configs/vit_cifar100.py:e2e --workdir=runs/c100_e2e
  python -m dblocks_jax.main --config=configs/vit_cifar100.py --mode=memory --workdir=runs/mem

Arguments: smoke (tiny, synthetic data), e2e (the end-to-end baseline).
Data: `tfds build cifar100 --file_format=array_record` once (needs TensorFlow).
"""

from configs import common, images


def get_config(arg=None):
  args = common.parse_arg(arg)
  c = images.vit_classification(
    **images.image_data("cifar100"),
    num_layers=12,
    width=128,
    num_heads=4,
    mlp_dim=3072,
    patch_size=4,
    num_blocks=3,
    epochs=500,
    batch_size=128,
    learning_rate=5e-4,
    warmup_epochs=10,
  )
  c.data.randaugment = True  # The paper's "flip + RandAugment" recipe.
  return common.finish(c, args, images.as_smoke)
