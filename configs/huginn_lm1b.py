"""Recurrent-depth LM on LM1B: the paper's layout (method_spec 2.5,
Table 5).

Huginn's default: 2 prelude, a 4-layer recurrent block and 2 coda layers,
Pythia-70M-like width 512 with 8 heads. The paper states only the layout,
the epochs (DiffusionBlocks 15, the baseline 5) and the baseline's depth
(mean 32, truncated backpropagation over the last 8 iterations); the rest
is our choice, taken from the autoregressive LM1B recipe (ar_lm1b) so that
the two families compare: Llama-2's 32K tokenizer, SwiGLU 1,408 (8/3 x 512,
rounded to 64), 256-token windows, batch 256, AdamW 3e-4 with 2,500 warm-up
steps, cosine decay to a tenth, weight decay 0.1, clipping at 1. K = 32
iterations at inference, greedy for DiffusionBlocks, top-p 0.95 for the
baseline.

  tfds build lm1b --data_dir=DIR
  python -m dblocks_jax.main --config=configs/huginn_lm1b.py --workdir=runs/huginn_lm1b \
    --config.data.dir=DIR --config.data.tokenizer=/path/to/tokenizer.model
  python -m dblocks_jax.main --config=configs/huginn_lm1b.py:baseline --workdir=runs/huginn_lm1b_baseline \
    --config.data.dir=DIR --config.data.tokenizer=/path/to/tokenizer.model

Arguments: smoke (a tiny model on the Python docs, seconds), baseline
(Huginn's training, 5 epochs; `e2e` is the same).
"""

from configs import common, language


def get_config(arg=None):
  args = common.parse_arg(arg, baseline=False)
  baseline = args.baseline or args.e2e  # The same.
  c = language.recurrent_language(
    **language.LM1B_LM,
    **language.HUGINN,
    width=512,
    num_heads=8,
    mlp_dim=1408,
    epochs=5 if baseline else 15,
    mean_depth=32.0,
    backprop_depth=8,
    inference_depth=32,
  )
  language.lm1b_lm_run(c)
  return common.finish(c, args, language.as_recurrent_smoke, e2e=baseline)
