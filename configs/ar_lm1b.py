"""Autoregressive LM on LM1B: the paper's recipe (method_spec 2.4, Table 4).

A 12-layer Llama-style transformer, width 768, 12 heads (SwiGLU 2,048),
with AdaLN noise conditioning; B=4 blocks of 3 layers, gamma 0.1; sequences
of 256 tokens, batch 256, AdamW 3e-4 with 2,500 warm-up steps, 10 epochs
(B x the steps block-wise, the same layer evaluations). The tokenizer is
Llama-2's 32K SentencePiece model, which cannot be bundled: pass its path.

  tfds build lm1b --data_dir=DIR
  python -m dblocks_jax.main --config=configs/ar_lm1b.py --workdir=runs/ar_lm1b \
    --config.data.dir=DIR --config.data.tokenizer=/path/to/tokenizer.model
  python -m dblocks_jax.main --config=configs/ar_lm1b.py --workdir=runs/ar_lm1b --mode=memory

Sentences are BOS-prefixed and packed into 256-token windows. The epoch
length assumes about 0.85B training tokens (30.3M sentences at about 28
tokens each with the Llama-2 tokenizer; UNVERIFIED). Evaluation follows
SEDD's protocol as far as the paper states it: 1,000 test prompts, 5
continuations of 50 tokens each.

Arguments: smoke (a tiny model on the Python docs, seconds), e2e (the AR
baseline).
"""

from configs import common, language


def get_config(arg=None):
  args = common.parse_arg(arg)
  c = language.ar_language(
    **language.LM1B_LM,
    num_layers=12,
    width=768,
    num_heads=12,
    mlp_dim=2048,
    num_blocks=4,
    epochs=10,
  )
  language.lm1b_lm_run(c)
  return common.finish(c, args, language.as_ar_smoke)
