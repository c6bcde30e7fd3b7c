"""The autoregressive LM family (method_spec 2.4): config -> experiment.

dblocks: the Llama-style next-token denoiser (`models.ar`) split into
blocks, trained on the 2T layout by `NextTokenDiffusion`; the token table is
trained with the shared parts (`shared`) or fixed from its own seed
(`independent`). e2e: the plain Llama LM of the same size (`CausalLM`).

Data: a token stream per split, cut into windows of `data.seq_len`.
  pydocs  the Python docs (python3.11-doc) as raw text, split by whole
          documents as the masked-diffusion corpus is, tokenised by a BPE of
          `model.vocab_size` pieces trained on the training split (or the
          SentencePiece model at `data.tokenizer`); written to the workdir.
  lm1b    LM1B through TFDS, each sentence prefixed with the tokenizer's BOS
          and packed; `data.tokenizer` must name a SentencePiece model (the
          paper uses Llama-2's 32K tokenizer, which cannot be bundled).

Evaluation (`eval.json`):
  * next-token accuracy over positions 1..T-1 of the first
    `eval.max_sequences` windows of `data.eval_split` (DiffusionBlocks: the
    argmax at the end of the routed chain, teacher-forced);
  * continuations: `eval.num_prompts` held-out prompts of
    `eval.prompt_length` tokens (windows spread evenly over the split),
    `eval.samples_per_prompt` continuations of `eval.continuation_length`
    tokens each (DiffusionBlocks greedy per chain, the baseline top-p), with
    the true continuation as the reference, to `samples/step_<N>.jsonl`,
    and the share of distinct token bigrams among them and among the
    references (`evaluate.diversity`);
  * with `eval.judge_workdir`: their generative perplexity and MAUVE under
    the judge (`evaluate.judge`).
"""

import dataclasses
import functools
import json
import os
from typing import Any

import numpy as np
from absl import logging

from dblocks_jax import errors
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.evaluate import diversity
from dblocks_jax.families import common
from dblocks_jax.families.base import Experiment
from dblocks_jax.models import ar
from dblocks_jax.nn import llama
from dblocks_jax.tasks.autoregressive import CausalLM, NextTokenDiffusion

CORPORA = ("pydocs", "lm1b")
TOKENIZER_FILE = "tokenizer.model"


def model_config(config) -> ar.ARConfig:
  """`config.model` as the LM's explicit hyper-parameters."""
  common.check_seq_len(config, "the context")
  common.check_choice(
    config.model.attention_impl, llama.ATTENTION_IMPLS, "model.attention_impl"
  )
  return common.model_spec(
    ar.ARConfig,
    config,
    *("vocab_size", "max_seq_len", "num_layers", "width", "num_heads"),
    *("mlp_dim", "cond_dim", "frequency_dim", "norm_eps", "rope_theta"),
    "attention_impl",
    lean_backward=lean_backward(config),
  )


def lean_backward(config) -> bool:
  """`model.lean_backward`: the Llama layers recompute their norms, AdaLN
  modulation and gated outputs in the backward pass instead of keeping
  them (`nn.llama`); False for the runs before the switch."""
  value = config.model.get("lean_backward", False)
  if not isinstance(value, bool):
    raise ConfigError(
      f"model.lean_backward={value!r} must be a bool (True: the"
      " norms and modulation are recomputed in the backward pass)."
    )
  return value


class TokenCorpus:
  """A tokenizer and the token ids of each split ([tokens] int32)."""

  def __init__(self, tokenizer, splits: dict[str, np.ndarray]):
    self.tokenizer, self.splits = tokenizer, splits

  def split(self, name: str) -> np.ndarray:
    """The split `data.eval_split` names."""
    if name not in self.splits:
      raise ConfigError(
        f"data.eval_split={name!r} is unknown; choose one of"
        f" {tuple(self.splits)}."
      )
    return self.splits[name]


def corpus_from_config(config) -> TokenCorpus:
  """The tokenised corpus of `config.data` (built once per process)."""
  d = config.data
  common.check_choice(d.name, CORPORA, "data.name")
  return _corpus(d.name, d.dir, d.tokenizer, config.model.vocab_size)


@functools.cache
def _corpus(name: str, folder: str, tokenizer_path: str, vocab_size: int):
  from dblocks_jax.data import text
  from dblocks_jax.data import tokenizer as tokenizers

  if name == "lm1b":
    if not tokenizer_path:
      raise DataError(
        "data.tokenizer is empty; LM1B needs a SentencePiece model (the"
        " paper uses Llama-2's 32K tokenizer, which cannot be bundled): set"
        " data.tokenizer=/path/to/tokenizer.model."
      )
    tok = tokenizers.load(tokenizer_path)
    tokenizers.check_vocab(tok, vocab_size)
    splits = {
      split: _lm1b_ids(folder, split, tok) for split in ("train", "test")
    }
    return TokenCorpus(tok, splits)
  documents = text.pydocs_splits(folder or text.PYDOCS_ROOT)
  if tokenizer_path:
    tok = tokenizers.load(tokenizer_path)
  else:
    tok = tokenizers.train_bpe(
      documents["train"], vocab_size, source="the Python docs' train split"
    )
  tokenizers.check_vocab(tok, vocab_size)
  splits = {
    split: np.concatenate([np.asarray(ids, np.int32) for ids in tok.encode(d)])
    for split, d in documents.items()
  }
  logging.info(
    "Python docs tokenised (%d pieces): %s tokens",
    tok.vocab_size,
    ", ".join(f"{k} {len(v):,}" for k, v in splits.items()),
  )
  return TokenCorpus(tok, splits)


def _lm1b_ids(folder: str, split: str, tok) -> np.ndarray:
  """LM1B's `split` from TFDS, each sentence BOS-prefixed, packed."""
  import tensorflow_datasets as tfds

  try:
    dataset = tfds.load("lm1b", split=split, data_dir=folder or None)
  except Exception as e:  # noqa: BLE001 - TFDS raises many kinds.
    raise DataError(
      f"LM1B's {split} split cannot be loaded from data.dir={folder!r}"
      f" ({type(e).__name__}: {e}); prepare it with `tfds build lm1b"
      " --data_dir=DIR` and set data.dir=DIR."
    ) from None
  bos = [tok.bos_id] if tok.bos_id >= 0 else []
  pieces, batch = [], []
  for example in tfds.as_numpy(dataset):
    batch.append(example["text"].decode("utf-8"))
    if len(batch) == 4096:
      pieces.extend(bos + ids for ids in tok.encode(batch))
      batch = []
  pieces.extend(bos + ids for ids in tok.encode(batch))
  return np.fromiter((i for ids in pieces for i in ids), np.int32)


def loss_chunk(config) -> int:
  """`model.loss_chunk`: tokens per chunk of the training loss's readout
  and cross-entropy (both methods; 0 = the dense logits)."""
  chunk = config.model.loss_chunk
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
    raise ConfigError(
      f"model.loss_chunk={chunk!r} must be an int >= 0 (tokens per chunk of"
      " the readout and cross-entropy; 0 = the dense logits)."
    )
  return chunk


def diffusion_task(config) -> NextTokenDiffusion:
  """The DiffusionBlocks next-token task of `config.diffusion`,
  `config.sampler` and `model.loss_chunk`."""
  d, s = config.diffusion, config.sampler
  fields = {
    "sigma_per": "diffusion.sigma_per",
    "estimate": "sampler.estimate",
    "top_p": "sampler.top_p",
    "temperature": "sampler.temperature",
  }
  with errors.config_fields(fields):
    return NextTokenDiffusion(
      **common.fields(d, "sigma_data", "max_weight", "sigma_per"),
      **common.fields(
        s, "estimate", "normalized_table", "top_p", "temperature"
      ),
      loss_chunk=loss_chunk(config),
    )


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """The `data.eval_split` token ids, its held-out prompts and their true
  continuations (`held_out_prompts`), and the corpus's tokenizer."""

  ids: np.ndarray
  prompts: np.ndarray
  references: np.ndarray
  tokenizer: Any


def held_out(config) -> HeldOut:
  """The held-out data of an evaluation or of `--mode=sample`."""
  corpus = corpus_from_config(config)
  ids = corpus.split(config.data.eval_split)
  return HeldOut(ids, *held_out_prompts(config, ids), corpus.tokenizer)


class ARFamily:
  """Autoregressive language modelling: see the module docstring."""

  # The masks of the training step: the 2T layout block-wise, causal e2e.
  mask_kinds = {"dblocks": ("two_stream",), "e2e": ("causal",)}

  def attention_path(self, config) -> str:
    """The attention path of `config`'s training step (`model.attention_impl`
    resolved on this platform), e.g. "chunked (auto on cpu)"."""
    spec = model_config(config)  # The recurrent LM's layers too.
    return spec.describe_attention(self.mask_kinds[common.check_method(config)])

  def build(self, config, *, held_blocks=None) -> Experiment:
    method = common.check_build(config)
    spec = model_config(config)
    logging.info("attention: %s", self.attention_path(config))
    if method == "e2e":
      model = common.end_to_end_model(
        config, lambda rngs: ar.LlamaLM(spec, rngs=rngs)
      )
      with errors.config_fields({"top_p": "sampler.top_p"}):
        task = CausalLM(
          top_p=config.sampler.top_p, loss_chunk=loss_chunk(config)
        )
      return Experiment("e2e", model, task, None)

    plan = common.plan_from_config(config)
    model = common.target_table_model(
      config,
      plan,
      shell=lambda rngs: ar.make_shell(spec, rngs),
      targets=lambda trainable, rngs: ar.make_targets(
        spec, trainable=trainable, rngs=rngs
      ),
      layers=lambda n, rngs: ar.make_layers(spec, n, rngs),
      held_blocks=held_blocks,
    )
    return Experiment("dblocks", model, diffusion_task(config), plan)

  def train_data(self, config, specs) -> dict:
    ids = corpus_from_config(config).splits["train"]
    return common.token_train_data(config, ids, specs)

  def batch_spec(self, config) -> dict:
    return common.token_batch_spec(config)

  def evaluator(self, config, experiment, workdir):
    """Next-token accuracy and continuations (see the module docstring)."""
    held = held_out(config)
    sampler = common.sampler_from_config(config, experiment.plan)
    judge = (
      judge_from_config(config, held.tokenizer) if len(held.prompts) else None
    )

    def run(trainer) -> dict:
      os.makedirs(workdir, exist_ok=True)
      held.tokenizer.save(os.path.join(workdir, TOKENIZER_FILE))
      result = next_token_accuracy(trainer, config, held.ids, sampler)
      if len(held.prompts):
        result.update(
          write_continuations(
            trainer, config, sampler, held, workdir, judge=judge
          )
        )
      result["split"] = config.data.eval_split
      result["inference_steps"] = self.inference_steps(config, sampler)
      return result

    return run

  def inference_steps(self, config, sampler) -> int:
    """Network evaluations per token: the sampler's grid, 1 without."""
    del config
    return sampler.num_steps if sampler else 1

  def describe(self, result) -> str:
    line = (
      f"next-token accuracy: {result['accuracy']:.4f} ({result['method']},"
      f" step {result['step']}, {result['num_tokens']:,} {result['split']}"
      f" tokens, {result['inference_steps']} inference steps)"
    )
    if "gen_ppl" in result:
      line += (
        f"; gen-ppl {result['gen_ppl']:.2f} (references"
        f" {result['reference_gen_ppl']:.2f}), MAUVE {result['mauve']:.3f}"
      )
    if "distinct_bigrams" in result:
      line += (
        f"; distinct bigrams {result['distinct_bigrams']:.3f} (references"
        f" {result['reference_distinct_bigrams']:.3f})"
      )
    if "samples" in result:
      line += (
        f"; {result['num_continuations']} continuations in {result['samples']}"
      )
    return line

  def write_samples(self, config, experiment, trainer, workdir) -> dict:
    """`--mode=sample`: continuations of held-out prompts (the `eval.*`
    prompt settings, `sample.seed`) to `samples/step_<N>.jsonl`."""
    held = held_out(config)
    if not len(held.prompts):
      raise ConfigError("eval.num_prompts=0: set it to at least 1 to sample.")
    sampler = common.sampler_from_config(config, experiment.plan)
    out = write_continuations(
      trainer, config, sampler, held, workdir, seed=config.sample.seed
    )
    out.update(
      step=trainer.step_count,
      inference_steps=self.inference_steps(config, sampler),
      seed=int(config.sample.seed),
    )
    return out

  def describe_samples(self, result) -> str:
    return (
      f"samples: {result['num_continuations']} continuations of"
      f" {result['num_prompts']} prompts at step {result['step']}; wrote"
      f" {result['samples']}"
    )


def held_out_prompts(config, ids: np.ndarray):
  """`eval.num_prompts` windows of prompt + continuation length spread
  evenly over the split -> (prompts [n, prompt_length], references [n,
  continuation_length])."""
  e = config.eval
  if e.num_prompts < 0:
    raise ConfigError(f"eval.num_prompts={e.num_prompts} must be >= 0.")
  if e.num_prompts and (e.prompt_length < 1 or e.continuation_length < 1):
    raise ConfigError(
      f"eval.prompt_length={e.prompt_length} and eval.continuation_length="
      f"{e.continuation_length} must be at least 1."
    )
  length = e.prompt_length + e.continuation_length
  if e.num_prompts and length > config.model.max_seq_len:
    raise ConfigError(
      f"a prompt of eval.prompt_length={e.prompt_length} tokens and its"
      f" eval.continuation_length={e.continuation_length}-token continuation"
      f" exceed the context (model.max_seq_len={config.model.max_seq_len});"
      " shorten either."
    )
  if not e.num_prompts:
    empty = np.zeros((0, 1), np.int32)
    return empty, empty
  from dblocks_jax.data import text

  windows = text.chunk(ids, length, name=config.data.eval_split)
  if len(windows) < e.num_prompts:
    raise DataError(
      f"the {config.data.eval_split} split holds {len(windows)} windows of"
      f" {length} tokens, fewer than eval.num_prompts={e.num_prompts};"
      " lower eval.num_prompts or the lengths."
    )
  picked = np.linspace(0, len(windows) - 1, e.num_prompts).astype(int)
  windows = windows[picked].astype(np.int32)
  return windows[:, : e.prompt_length], windows[:, e.prompt_length :]


def next_token_accuracy(trainer, config, ids, sampler) -> dict:
  from dblocks_jax.data import sequences

  if config.eval.max_sequences:
    ids = ids[: config.eval.max_sequences * config.data.seq_len]
  batches = sequences.eval_batches(
    ids,
    seq_len=config.data.seq_len,
    batch_size=config.eval_batch_size,
    name=config.data.eval_split,
  )
  return trainer.evaluate(batches, sampler=sampler)


def generate_fn(trainer, sampler, *, num_tokens: int, use_cache: bool = True):
  """The jitted `generate(arrays, prompt [b, P], key) -> [b, P + n]`,
  compiled once per trainer and settings."""
  import jax

  from dblocks_jax.blockwise import inference

  task, graphdefs = trainer.task, trainer.graphdefs

  def build():
    @jax.jit
    def generate(arrays, prompt, key):
      return task.generate(
        inference.parts_for_block_fn(graphdefs, arrays),
        prompt,
        key,
        sampler=sampler,
        num_tokens=num_tokens,
        use_cache=use_cache,
      )

    return generate

  settings = (sampler.key if sampler else None, num_tokens, use_cache)
  return trainer.compiled(("ar.generate", *settings), build)


def continuations(
  trainer, sampler, prompts, *, num_tokens, samples_per_prompt, batch_size, seed
) -> np.ndarray:
  """[prompts, samples_per_prompt, num_tokens] generated ids."""
  import jax

  from dblocks_jax.data import sequences

  generate = generate_fn(trainer, sampler, num_tokens=num_tokens)
  rows = np.repeat(prompts, samples_per_prompt, axis=0)
  arrays, key = trainer.arrays(), jax.random.key(seed)
  tokens = sequences.map_in_batches(
    lambda batch, i: generate(arrays, batch, jax.random.fold_in(key, i)),
    rows,
    batch_size,
  )
  return tokens[:, prompts.shape[1] :].reshape(
    len(prompts), samples_per_prompt, -1
  )


def write_continuations(
  trainer, config, sampler, held: HeldOut, workdir, *, seed=None, judge=None
) -> dict:
  """Generates `eval.samples_per_prompt` continuations of every held-out
  prompt and writes `samples/step_<N>.jsonl` (one line per continuation: the
  prompt, the continuation and the reference, as text and ids); with a
  `judge`, also their generative perplexity and MAUVE against the
  references."""
  e = config.eval
  prompts, references, tokenizer = held.prompts, held.references, held.tokenizer
  generated = continuations(
    trainer,
    sampler,
    prompts,
    num_tokens=e.continuation_length,
    samples_per_prompt=e.samples_per_prompt,
    batch_size=config.eval_batch_size,
    seed=e.seed if seed is None else seed,
  )
  folder = os.path.join(workdir, "samples")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"step_{trainer.step_count}.jsonl")
  with open(path, "w") as f:
    for p, (prompt, reference) in enumerate(
      zip(prompts, references, strict=True)
    ):
      for s, continuation in enumerate(generated[p]):
        line = {
          "prompt_index": p,
          "sample": s,
          "prompt": tokenizer.decode(prompt),
          "continuation": tokenizer.decode(continuation),
          "reference": tokenizer.decode(reference),
          "prompt_ids": prompt.tolist(),
          "continuation_ids": continuation.tolist(),
          "reference_ids": reference.tolist(),
        }
        f.write(json.dumps(line) + "\n")
  out = {
    "samples": path,
    "num_prompts": len(prompts),
    "num_continuations": int(generated.shape[0] * generated.shape[1]),
    "prompt_length": int(prompts.shape[1]),
    "continuation_length": int(e.continuation_length),
    "decoding": (
      "greedy" if sampler is not None else f"top-p {config.sampler.top_p}"
    ),
    "distinct_bigrams": diversity.distinct_ngrams(
      generated.reshape(-1, generated.shape[-1]), 2
    ),
    "reference_distinct_bigrams": diversity.distinct_ngrams(references, 2),
  }
  if judge is not None:
    out.update(judge_text(judge, config, prompts, references, generated))
  return out


def judge_text(judge, config, prompts, references, generated) -> dict:
  """Generative perplexity (continuations and references) and MAUVE."""
  from dblocks_jax.evaluate import judge as judging

  batch = config.eval_batch_size
  repeated = np.repeat(prompts, generated.shape[1], axis=0)
  flat = generated.reshape(-1, generated.shape[-1])
  q = judge.features(flat, batch_size=batch)
  p = judge.features(references, batch_size=batch)
  return {
    **judge.description,
    "gen_ppl": judge.perplexity(repeated, flat, batch_size=batch),
    "reference_gen_ppl": judge.perplexity(
      prompts, references, batch_size=batch
    ),
    "mauve": judging.mauve(
      p, q, scaling=config.eval.mauve_scaling, seed=config.eval.seed
    ),
    "mauve_scaling": float(config.eval.mauve_scaling),
    "num_references": len(references),
  }


def judge_from_config(config, tokenizer):
  """The judge of `eval.judge_workdir`, or None when it is empty."""
  if not config.eval.judge_workdir:
    return None
  from dblocks_jax.families import evaluation

  return evaluation.load_judge(
    config.eval.judge_workdir,
    vocab_size=config.model.vocab_size,
    tokenizer_proto=tokenizer.proto,
  )


FAMILY = ARFamily()
