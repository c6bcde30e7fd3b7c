"""Masked-diffusion LM (MD4) on the Python docs: the CPU-sized comparison.

The English reStructuredText sources of the Python documentation (Debian
package python3.11-doc, offline), normalised to text8's 27 symbols and
split 90/5/5 by whole documents (data/text.py). A token DiT of 6 layers,
width 128, 4 heads over 64-character sequences; B=3 blocks of 2 layers,
gamma 0.05; batch 32, AdamW 1e-3 (weight decay 0.03, cosine decay after
200 warm-up steps). Durations count baseline steps: the block-wise run
takes B x the steps, each through one block (the same layer evaluations).

  apt-get install python3.11-doc
  python -m dblocks_jax.main --config=configs/mdm_pydocs.py --workdir=runs/mdm_pydocs
  python -m dblocks_jax.main --config=configs/mdm_pydocs.py:e2e --workdir=runs/mdm_pydocs_e2e
  python -m dblocks_jax.main --config=configs/mdm_pydocs.py --workdir=runs/mdm_pydocs --mode=sample

Evaluation: BPC on the first 2,048 test sequences (131,072 characters)
with 12 times per sequence (4 per block), and 4 text samples of 64
ancestral steps.

Arguments: smoke (a tiny model, seconds), e2e (the end-to-end MDM: B=1,
the same layer evaluations), steps=N (baseline steps; default 2,500).
"""

from configs import common, language


def get_config(arg=None):
  args = common.parse_arg(arg, steps=2500)
  c = language.mdm_language(
    **language.PYDOCS_RUN,
    corpus="pydocs",
    num_train_characters=7_850_577,
    num_layers=6,
    width=128,
    num_heads=4,
    num_blocks=3,
  )
  common.set_steps(c, args.steps)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.eval.max_sequences = 2048
  return common.finish(c, args, language.as_mdm_smoke)
