"""The language recipes: the masked-diffusion, autoregressive and
recurrent-depth LMs over one language recipe, the CPU-sized Python-docs and
LM1B runs, and their smoke settings."""

import ml_collections

from configs import common


def _language(
  model,
  *,
  corpus,
  num_train_tokens,
  seq_len,
  num_blocks,
  epochs,
  batch_size,
  learning_rate,
  warmup_steps,
  weight_decay,
):
  """The language models' recipe: epochs of `num_train_tokens` cut into
  windows of `seq_len` (the longest context, `model.max_seq_len`); AdamW
  with the family's `weight_decay`, warmup in baseline steps, cosine decay,
  clipping at 1; the corpus, and the evaluation's and sampling's seeds."""
  num_windows = num_train_tokens // seq_len
  c = common.recipe(model, num_windows, num_blocks, epochs, batch_size)
  c.eval_batch_size = 64
  c.model.max_seq_len = seq_len
  common.optimizer(
    c,
    learning_rate=learning_rate,
    warmup_steps=warmup_steps * num_blocks,
    weight_decay=weight_decay,
  )
  c.data = ml_collections.ConfigDict()
  c.data.name = corpus  # pydocs (python3.11-doc) | text8 | lm1b (TFDS)
  # pydocs: "" = /usr/share/doc/python3.11; text8: the folder that holds
  # text8.zip (or the file itself); lm1b: the TFDS data_dir.
  c.data.dir = ""
  c.data.seq_len = seq_len
  c.data.eval_split = "test"  # test | validation (text8)
  c.eval = ml_collections.ConfigDict()
  c.eval.max_sequences = 0  # Evaluated windows; 0 = the whole split.
  c.eval.seed = 1
  c.sample = ml_collections.ConfigDict()  # --mode=sample
  c.sample.seed = 0
  return c


def mdm_language(
  *,
  corpus: str,
  num_train_characters: int,
  num_layers: int,
  width: int,
  num_heads: int,
  **language,
) -> ml_collections.ConfigDict:
  """The DiffusionBlocks masked-diffusion LM recipe (method_spec 2.3, MD4)
  on `_language`'s run (its other arguments: seq_len, num_blocks, epochs,
  batch_size, learning_rate, warmup_steps).

  MD4's linear schedule, the partition in equal decrements of alpha(t),
  gamma 0.05 by t-width (our choice: the paper does not say how gamma
  widens a t-interval); AdamW with weight decay 0.03 and warmup, cosine
  decay to zero (MD4's text8 recipe), clipping at 1.
  """
  c = _language(
    "mdm",
    corpus=corpus,
    num_train_tokens=num_train_characters,
    weight_decay=0.03,
    **language,
  )
  c.model.update(
    num_layers=num_layers,
    width=width,
    num_heads=num_heads,
    mlp_ratio=4,
    # The token DiT's attention: dense (jax.nn.dot_product_attention, the
    # scores written out) | chunked (nn.chunked_attention: none written
    # out) | auto (cuDNN's fused attention on GPU where it can run, else
    # chunked). Forward-mode autodiff (jax.jvp) needs dense.
    attention_impl="auto",
    # rotary (RoPE on q and k in every layer, no table: the SEDD/MDLM-style
    # model the paper names; with learned positions the end-to-end
    # mdm_pydocs model never left the unigram plateau) | learned (an
    # absolute position table of max_seq_len rows; runs saved before the
    # field load as learned).
    positions="rotary",
  )
  c.optimizer.min_learning_rate = 0.0
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "linear"  # alpha(t): linear (MD4) | cosine
  c.diffusion.t_min = 1e-3  # Training never draws t below this.
  c.diffusion.time_scale = 1000.0  # The time embedder reads 1000 t.

  c.sampler = ml_collections.ConfigDict()
  c.sampler.num_steps = c.data.seq_len  # Grid points, free of B.
  c.sampler.method = "ancestral"  # MD4's ancestral unmasking.
  c.sampler.grid = "uniform"  # Equal rises of alpha per step.

  # Times per sequence in the ELBO estimate, split evenly over the blocks
  # (a multiple of B), stratified within each block's t-interval.
  c.eval.num_t_samples = 12
  c.eval.num_samples = 4  # Text samples written at each evaluation.
  c.sample.num_samples = 8
  return c


def _lm_smoke(c, *, eval_batch_size, **model) -> None:
  """A tiny language model over 32-token windows of the Python docs."""
  c.data.name = "pydocs"
  c.data.dir = ""
  c.data.seq_len = 32
  common.smoke(
    c,
    eval_batch_size=eval_batch_size,
    warmup_steps=2,
    width=32,
    max_seq_len=32,
    **model,
  )


def as_mdm_smoke(c: ml_collections.ConfigDict) -> None:
  """A tiny token DiT on the Python docs: seconds on a CPU."""
  _lm_smoke(c, eval_batch_size=32)
  c.sampler.num_steps = 8
  c.eval.update(num_t_samples=3, max_sequences=64, num_samples=2)
  c.sample.num_samples = 3


def ar_language(
  *,
  vocab_size: int,
  num_layers: int,
  width: int,
  num_heads: int,
  mlp_dim: int,
  **language,
) -> ml_collections.ConfigDict:
  """The DiffusionBlocks autoregressive LM recipe (method_spec 2.4) on
  `_language`'s run (its other arguments: corpus, num_train_tokens,
  seq_len, num_blocks, epochs, batch_size, learning_rate, warmup_steps).

  A Llama-style transformer (RMSNorm, RoPE, SwiGLU) with AdaLN noise
  conditioning; the 2T layout; EDM over token embeddings with the paper's
  log-normal, equi-probable partition, gamma 0.1; B routed Euler steps per
  token, greedy. AdamW at the paper's rate and warmup; what the paper does
  not state is our choice: cosine decay to a tenth, weight decay 0.1 and
  clipping at 1 (Llama-2's), sigma per token.
  """
  c = _language("ar", weight_decay=0.1, **language)
  c.model.update(
    vocab_size=vocab_size,  # The tokenizer's pieces.
    num_layers=num_layers,
    width=width,
    num_heads=num_heads,
    mlp_dim=mlp_dim,  # SwiGLU hidden size.
    cond_dim=width,  # Width of the noise-level condition.
    norm_eps=1e-5,  # RMSNorm epsilon (Llama-2).
    rope_theta=10000.0,
    # The Llama layers' attention: dense (jax.nn.dot_product_attention, a
    # dense mask) | chunked (nn.chunked_attention: no scores written out)
    # | auto (cuDNN's fused attention on GPU where the mask allows it, else
    # chunked). Forward-mode autodiff (jax.jvp) needs dense.
    attention_impl="auto",
    # Tokens per chunk of the training loss's vocabulary head and
    # cross-entropy, both methods (nn.chunked_loss: the [batch, T, vocab]
    # logits never held whole; their gradient is computed in the forward
    # pass, no matmul runs twice); 0 = the dense logits. Reverse mode only.
    loss_chunk=2048,
    # The layers keep the inputs of their RMSNorms, AdaLN modulation and
    # gated last Linears for backward, not what these compute, and
    # recompute that there (nn.llama; both methods): the same values, less
    # memory, one more modulation, output and down projection per
    # conditioned layer in backward. Reverse mode only.
    lean_backward=True,
  )
  c.blocks.gamma = 0.1
  common.edm(
    c,
    num_steps=0,  # B steps per token.
    estimate="soft",  # soft: softmax(logits) @ E | hard: argmax row
    normalized_table=True,  # The estimate uses the target rows.
    top_p=0.95,  # The baseline's nucleus sampling.
    # Scales DiffusionBlocks' starting noise: 1 = the official chain (a
    # sampler of the model's distribution); lower sharpens, 0 is
    # deterministic.
    temperature=1.0,
  )
  # token: every noisy token draws its own sigma in the block's range;
  # sequence: one sigma per sequence.
  c.diffusion.sigma_per = "token"
  c.optimizer.min_learning_rate = c.optimizer.learning_rate / 10
  c.optimizer.b2 = 0.95  # Llama-2's.
  # A SentencePiece model; "" trains a BPE of model.vocab_size pieces on the
  # pydocs training split (LM1B needs one: Llama-2's tokenizer.model).
  c.data.tokenizer = ""
  c.eval.num_prompts = 64  # Held-out prompts; 0 = no continuations.
  c.eval.samples_per_prompt = 5
  c.eval.prompt_length = 32
  c.eval.continuation_length = 32
  # The judge of generative perplexity and MAUVE: the workdir of an ar_*
  # :e2e run on the same corpus and tokenizer ("" = no judge).
  c.eval.judge_workdir = ""
  c.eval.mauve_scaling = 2.0  # The paper's (v4); the mauve package's is 5.
  return c


# The CPU-sized language runs on the Python docs, shared by the three LM
# families' configs so that they compare: windows, epochs and optimizer.
PYDOCS_RUN = dict(
  seq_len=64, epochs=1, batch_size=32, learning_rate=1e-3, warmup_steps=200
)
# The language corpora's data and optimizer settings, shared by the
# autoregressive and recurrent-depth configs so that their runs compare
# (and share a judge): `ar_language(**PYDOCS_LM, ...)`.
PYDOCS_LM = dict(
  corpus="pydocs", num_train_tokens=3_875_713, vocab_size=2048, **PYDOCS_RUN
)
# The token noise the autoregressive family found better than the paper's
# EDM log-normal (P_mean -1.2, P_std 1.2) at the Python docs' width: sigmas
# where unit-norm token embeddings are still being told apart
# (docs/results.md, "Autoregressive LM"): `c.diffusion.update(NARROW_NOISE)`.
NARROW_NOISE = dict(p_mean=-0.7, p_std=0.5)
LM1B_LM = dict(  # The paper's (method_spec 2.4).
  corpus="lm1b",
  num_train_tokens=850_000_000,
  vocab_size=32000,
  seq_len=256,
  batch_size=256,
  learning_rate=3e-4,
  warmup_steps=2500,
)


def pydocs_lm_run(c: ml_collections.ConfigDict) -> None:
  """Logging, checkpoints and evaluation of the CPU-sized language runs:
  1,000 prompts x 5 (SEDD's protocol), accuracy on 1,024 test windows."""
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.eval_batch_size = 250
  c.eval.update(max_sequences=1024, num_prompts=1000)


def lm1b_lm_run(c: ml_collections.ConfigDict) -> None:
  """Logging, checkpoints and evaluation of the LM1B runs: 1,000 test
  prompts of 50 tokens, 5 continuations of 50 each."""
  c.log_every_steps = 500
  c.checkpoint_every_steps = 5000
  c.eval_batch_size = 128
  c.eval.update(
    max_sequences=4096,
    num_prompts=1000,
    prompt_length=50,
    continuation_length=50,
  )


def as_ar_smoke(c: ml_collections.ConfigDict) -> None:
  """A tiny Llama on the Python docs with a 512-piece BPE: seconds."""
  c.data.tokenizer = ""
  _lm_smoke(c, eval_batch_size=16, vocab_size=512, mlp_dim=64, cond_dim=32)
  c.eval.update(
    max_sequences=32,
    num_prompts=2,
    samples_per_prompt=2,
    prompt_length=8,
    continuation_length=8,
  )


# Huginn's default layout (method_spec 2.5): `recurrent_language(**HUGINN,
# ...)`.
HUGINN = dict(prelude_layers=2, recurrent_layers=4, coda_layers=2)


def recurrent_language(
  *,
  prelude_layers: int,
  recurrent_layers: int,
  coda_layers: int,
  mean_depth: float,
  backprop_depth: int,
  inference_depth: int,
  **ar_recipe,
) -> ml_collections.ConfigDict:
  """The recurrent-depth LM recipe (method_spec 2.5) on `ar_language`'s
  data, evaluation and optimizer (its other arguments).

  DiffusionBlocks trains the recurrent block and the coda as one block over
  the whole noise range (B=1), the prelude as a shared part; the baseline is
  Huginn's training (a log-normal Poisson depth per step, truncated
  backpropagation). K = `sampler.num_steps` is both DiffusionBlocks' Euler
  steps and the baseline's iterations at inference.
  """
  c = ar_language(
    num_layers=prelude_layers + recurrent_layers + coda_layers,
    num_blocks=1,
    **ar_recipe,
  )
  c.model.name = "recurrent"
  c.model.prelude_layers = prelude_layers  # Once, on the clean tokens.
  c.model.recurrent_layers = recurrent_layers  # Iterated, tied weights.
  c.model.coda_layers = coda_layers  # After the recurrence.
  c.model.state_std = 1.0  # The baseline's random initial state.
  c.sampler.num_steps = inference_depth  # K (iterations = Euler steps).
  c.recurrence = ml_collections.ConfigDict()  # The baseline's training.
  c.recurrence.mean_depth = mean_depth  # Log-normal Poisson mean (+ 1).
  c.recurrence.depth_sigma = 0.5  # Its log-normal spread (Huginn's).
  c.recurrence.backprop_depth = backprop_depth  # Iterations with gradients.
  return c


def as_recurrent_smoke(c: ml_collections.ConfigDict) -> None:
  """`as_ar_smoke` with one prelude, recurrent and coda layer, B=1, depth 3
  (2 backpropagated) and K = 3: seconds."""
  as_ar_smoke(c)
  c.blocks.num_blocks = 1
  c.model.prelude_layers = c.model.recurrent_layers = c.model.coda_layers = 1
  c.recurrence.mean_depth = 3.0
  c.recurrence.backprop_depth = 2
  c.sampler.num_steps = 3
