"""Recurrent-depth LM on the Python docs: the CPU-sized comparison.

Huginn's layout at the autoregressive comparison's size (ar_pydocs): 2
prelude, 4 recurrent and 2 coda Llama layers of width 128, 4 heads, SwiGLU
352, over 64-token windows of the 2,048-piece BPE; batch 32, AdamW 1e-3
after 200 warm-up steps. DiffusionBlocks trains the recurrent block and the
coda in one pass per step as the next-token denoiser (B=1, the prelude
shared); the baseline (`:baseline`) is Huginn's training at a CPU-sized
depth: a log-normal Poisson depth of mean 8 per step (the paper's 32 would
make the baseline 4 x dearer), gradients through the last 4 iterations (the
paper's 8). Both infer with K = 8 iterations (`sampler.num_steps`; the
paper's 32 is a flag away).

  apt-get install python3.11-doc
  python -m dblocks_jax.main --config=configs/huginn_pydocs.py --workdir=runs/huginn_pydocs
  python -m dblocks_jax.main --config=configs/huginn_pydocs.py:baseline --workdir=runs/huginn_pydocs_baseline

Evaluation is the autoregressive family's (ar_pydocs): next-token
accuracy, continuations, and with `eval.judge_workdir` (an ar_pydocs:judge
run) generative perplexity and MAUVE.

Noise: the paper's EDM log-normal (P_mean -1.2, P_std 1.2) by default.
`ar_noise` gives DiffusionBlocks the distribution the autoregressive
family found better at this width (`language.NARROW_NOISE`: P_mean -0.7,
P_std 0.5, where unit-norm token embeddings are still being told apart). With one
block (B=1) its range is the whole noise range, so sigma stays drawn from
the log-normal itself: ar_pydocs' log-uniform draw within each block would
undo the narrowing here.

Arguments: smoke (a tiny model, seconds), baseline (Huginn's training;
`e2e` is the same), steps=N (training steps; default 1,000), ar_noise
(the narrowed noise above).
"""

from configs import common, language


def get_config(arg=None):
  args = common.parse_arg(arg, baseline=False, steps=1000, ar_noise=False)
  c = language.recurrent_language(
    **language.PYDOCS_LM,
    **language.HUGINN,
    width=128,
    num_heads=4,
    mlp_dim=352,
    mean_depth=8.0,
    backprop_depth=4,
    inference_depth=8,
  )
  common.set_steps(c, args.steps)
  language.pydocs_lm_run(c)
  if args.ar_noise:
    c.diffusion.update(language.NARROW_NOISE)
  baseline = args.baseline or args.e2e
  return common.finish(c, args, language.as_recurrent_smoke, e2e=baseline)
