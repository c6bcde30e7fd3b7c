"""DiT on CIFAR-10 pixels, the paper's recipe (method_spec 2.2, Table 2).

DiT-S/2 (12 layers, width 384, 6 heads, patch 2: 256 tokens), B=3 (4 layers
each), gamma 0.05, AdamW 1e-4 constant, batch 512, 100 epochs (x B for
DiffusionBlocks), 10% label dropout; 50 Euler steps, guidance 2.0. The paper
reports FID 37.20 (DiffusionBlocks) against 39.83 (end to end).

  tfds build cifar10 --file_format=array_record   # once, needs TensorFlow
  python -m dblocks_jax.main --config=configs/vit_cifar100.py:e2e --workdir=runs/c10_cls \\
    --config.data.name=cifar10 --config.data.num_classes=10
  python -m dblocks_jax.main --config=configs/dit_cifar10.py --workdir=runs/dit_c10 \\
    --config.eval.classifier_workdir=runs/c10_cls

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
  if args.smoke:
    common.as_dit_smoke(c)
  if args.e2e:
    common.as_end_to_end(c)
  return c
