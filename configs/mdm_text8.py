"""Masked-diffusion LM (MD4) on text8: the paper's recipe (method_spec 2.3).

A token DiT of 12 layers, width 768, 12 heads over sequences of 256
characters; B=3 blocks of 4 layers, each trained on its third of the
masking schedule (alpha falls by 1/3 across each), gamma 0.05; batch 256,
AdamW 3e-4 with weight decay 0.03 and 2,000 warm-up steps, 100 epochs of
the 90M training characters (durations count baseline steps: the
block-wise run takes B x the steps through one block each).

  # text8.zip from http://mattmahoney.net/dc/text8.zip, in data/text8/
  python -m dblocks_jax.main --config=configs/mdm_text8.py \\
    --config.data.dir=data/text8 --workdir=runs/mdm_text8
  python -m dblocks_jax.main --config=configs/mdm_text8.py:e2e \\
    --config.data.dir=data/text8 --workdir=runs/mdm_text8_e2e
  python -m dblocks_jax.main --config=configs/mdm_text8.py \\
    --workdir=runs/mdm_text8_memory --mode=memory

The paper reports 1.45 BPC for DiffusionBlocks against 1.56 for the
end-to-end MDM on the text8 test split.

Arguments: smoke (a tiny model on the Python docs, seconds on a CPU), e2e
(the end-to-end MDM: B=1, the same layer evaluations), epochs=N.
"""

from configs import common, language


def get_config(arg=None):
  args = common.parse_arg(arg, epochs=100)
  c = language.mdm_language(
    corpus="text8",
    num_train_characters=90_000_000,
    num_layers=12,
    width=768,
    num_heads=12,
    seq_len=256,
    num_blocks=3,
    epochs=args.epochs,
    batch_size=256,
    learning_rate=3e-4,
    warmup_steps=2000,
  )
  c.log_every_steps = 200
  c.checkpoint_every_steps = 5000
  return common.finish(c, args, language.as_mdm_smoke)
