"""The masked-diffusion LM family (MD4; method_spec 2.3): config -> experiment.

dblocks: the token DiT (`models.mdm`) split into blocks, block b trained on
its t-interval of the masking schedule (`MaskedDiffusion`, `Masking`).
e2e: the same model trained as one block over [0, 1] (the end-to-end MDM).
Evaluation: bits per character on `data.eval_split` from the ELBO, each
block integrating over its own t-interval with `eval.num_t_samples / B`
stratified times per sequence, the standard error over sequences; and
`eval.num_samples` text samples from the routed ancestral sampler, written
to `samples/step_<N>.txt`.
"""

import functools
import math
import os

import numpy as np
from absl import logging

from dblocks_jax import errors
from dblocks_jax.diffusion.masking import Masking
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import common
from dblocks_jax.families.base import Experiment
from dblocks_jax.models import mdm
from dblocks_jax.nn.attention import ATTENTION_IMPLS
from dblocks_jax.tasks.base import Sampler
from dblocks_jax.tasks.masked_diffusion import MaskedDiffusion

CORPORA = ("pydocs", "text8")
MASKING_FIELDS = {"schedule": "diffusion.schedule", "t_min": "diffusion.t_min"}


def model_config(config) -> mdm.MDMConfig:
  """`config.model` as the token DiT's explicit hyper-parameters; rotary
  positions have no table, so `model.max_seq_len` bounds only learned
  ones."""
  from dblocks_jax.data import text

  common.check_choice(config.model.positions, mdm.POSITIONS, "model.positions")
  if config.model.positions == "learned":
    common.check_seq_len(config, "the position table")
  common.check_choice(
    config.model.attention_impl, ATTENTION_IMPLS, "model.attention_impl"
  )
  return common.model_spec(
    mdm.MDMConfig,
    config,
    *("max_seq_len", "num_layers", "width", "num_heads", "mlp_ratio"),
    *("frequency_dim", "attention_impl", "positions"),
    vocab_size=text.VOCAB_SIZE,
  )


def masking_from_config(config) -> Masking:
  d = config.diffusion
  with errors.config_fields(MASKING_FIELDS):
    return Masking(schedule=d.schedule, t_min=d.t_min)


def sampler_from_config(config, plan) -> Sampler:
  s = config.sampler
  if s.method != "ancestral":
    raise ConfigError(
      f"sampler.method={s.method!r} does not sample masked diffusion; set"
      " sampler.method='ancestral' (MD4's ancestral unmasking)."
    )
  return common.sampler_from_config(config, plan)


def corpus_from_config(config):
  """The corpus of `config.data` (read once per process)."""
  d = config.data
  common.check_choice(d.name, CORPORA, "data.name")
  return _corpus(d.name, d.dir)


@functools.cache
def _corpus(name: str, folder: str):
  from dblocks_jax.data import text

  if name == "text8":
    path = (
      folder if os.path.isfile(folder) else os.path.join(folder, "text8.zip")
    )
    return text.load_text8(path)
  return text.load_pydocs(folder or text.PYDOCS_ROOT)


def split_ids(config, split: str) -> np.ndarray:
  corpus = corpus_from_config(config)
  if split not in corpus.splits:
    raise ConfigError(
      f"data.eval_split={split!r} is unknown; choose one of"
      f" {tuple(corpus.splits)}."
    )
  return corpus.splits[split]


class MDMFamily:
  """Masked-diffusion language modelling: see the module docstring."""

  def attention_path(self, config) -> str:
    """The attention path of `config`'s training step (`model.attention_impl`
    resolved on this platform), e.g. "chunked (auto on cpu)"."""
    return model_config(config).describe_attention()

  def build(self, config, *, held_blocks=None) -> Experiment:
    method = common.check_build(config)
    spec = model_config(config)
    logging.info("attention: %s", spec.describe_attention())
    blockwise = method == "dblocks"
    plan = common.plan_from_config(
      config, single_block=not blockwise, noise=masking_from_config(config)
    )
    model = common.blockwise_model(
      config,
      plan,
      shell=lambda rngs: mdm.make_shell(spec, rngs),
      layers=lambda n, rngs: mdm.make_layers(spec, n, rngs),
      held_blocks=held_blocks,
    )
    with errors.config_fields(MASKING_FIELDS):
      task = MaskedDiffusion(
        vocab_size=spec.vocab_size,
        schedule=config.diffusion.schedule,
        time_scale=config.diffusion.time_scale,
      )
    return Experiment(method, model, task, plan)

  def train_data(self, config, specs) -> dict:
    return common.token_train_data(config, split_ids(config, "train"), specs)

  def batch_spec(self, config) -> dict:
    return common.token_batch_spec(config)

  def evaluator(self, config, experiment, workdir):
    """Bits per character and text samples (see the module docstring)."""
    from dblocks_jax.data import text

    num_t = num_t_per_block(config, experiment.plan)
    ids = split_ids(config, config.data.eval_split)
    text.chunk(ids, config.data.seq_len, name=config.data.eval_split)  # Now.
    sampler = sampler_from_config(config, experiment.plan)

    def run(trainer) -> dict:
      result = bits_per_character(
        trainer,
        experiment,
        ids,
        seq_len=config.data.seq_len,
        batch_size=config.eval_batch_size,
        num_t=num_t,
        max_sequences=config.eval.max_sequences,
        seed=config.eval.seed,
        split=config.data.eval_split,
      )
      result["split"] = config.data.eval_split
      if config.eval.num_samples:
        result["samples"] = write_sample_text(
          trainer, sampler, config, workdir, config.eval
        )
      result.update(sampler=sampler.method, inference_steps=sampler.num_steps)
      return result

    return run

  def describe(self, result) -> str:
    return (
      f"bpc: {result['bpc']:.4f} +- {result['bpc_stderr']:.4f}"
      f" ({result['method']}, step {result['step']},"
      f" {result['num_sequences']} {result['split']} sequences x"
      f" {result['num_t_samples']} times)"
    )

  def write_samples(self, config, experiment, trainer, workdir) -> dict:
    """`--mode=sample`: `sample.num_samples` sequences of `data.seq_len`
    characters to `samples/step_<N>.txt`, one per line."""
    sampler = sampler_from_config(config, experiment.plan)
    s = config.sample
    return {
      "txt": write_sample_text(trainer, sampler, config, workdir, s),
      "num_samples": int(s.num_samples),
      "step": trainer.step_count,
      "inference_steps": int(sampler.num_steps),
      "sampler": sampler.method,
      "seed": int(config.sample.seed),
    }

  def describe_samples(self, result) -> str:
    return (
      f"samples: {result['num_samples']} at step {result['step']}"
      f" ({result['inference_steps']} {result['sampler']} steps);"
      f" wrote {result['txt']}"
    )


def num_t_per_block(config, plan) -> int:
  """`eval.num_t_samples` split evenly over the plan's blocks."""
  total, blocks = config.eval.num_t_samples, plan.num_blocks
  if total < 1 or total % blocks:
    raise ConfigError(
      f"eval.num_t_samples={total} must be a positive multiple of the"
      f" {blocks} block(s), so that every block integrates over its"
      f" t-interval with as many times; e.g. {blocks * max(1, total // blocks)}"
      "."
    )
  return total // blocks


def bits_per_character(
  trainer,
  experiment: Experiment,
  ids: np.ndarray,
  *,
  seq_len: int,
  batch_size: int,
  num_t: int,
  max_sequences: int = 0,
  seed: int = 0,
  split: str = "test",
) -> dict:
  """BPC of the sequences of `ids` from the routed ELBO estimate.

  Args:
    trainer: holds the model's arrays.
    experiment: its task (MaskedDiffusion) and plan.
    ids: [characters] the split.
    num_t: stratified times per block and sequence.
    max_sequences: evaluate the first this many sequences (0 = all).
    split: the split's name, for errors.

  Returns:
    bpc (mean over sequences), bpc_stderr (the standard error of that mean
    over sequences), bpc_per_block (each block's share), num_sequences,
    num_t_samples (per sequence, all blocks).
  """
  import jax

  from dblocks_jax.blockwise import inference
  from dblocks_jax.data import sequences

  task, plan = experiment.task, experiment.plan
  graphdefs = trainer.graphdefs

  def build():
    @jax.jit
    def nelbo(arrays, tokens, key):
      parts_for_block = inference.parts_for_block_fn(graphdefs, arrays)
      return task.nelbo(
        parts_for_block, tokens, key, boundaries=plan.boundaries, num_t=num_t
      )

    return nelbo

  boundaries = tuple(np.asarray(plan.boundaries).tolist())
  nelbo = trainer.compiled(("mdm.nelbo", boundaries, num_t), build)

  if max_sequences:
    ids = ids[: max_sequences * seq_len]
  arrays = trainer.arrays()
  key = jax.random.key(seed)
  shares = []
  batches = sequences.eval_batches(
    ids, seq_len=seq_len, batch_size=batch_size, name=split
  )
  for i, batch in enumerate(batches):
    out = np.asarray(nelbo(arrays, batch["tokens"], jax.random.fold_in(key, i)))
    shares.append(out[batch["mask"]])
  shares = np.concatenate(shares) / math.log(2)  # [sequences, B] in bits.
  per_sequence = shares.sum(-1)
  count = len(per_sequence)
  stderr = per_sequence.std(ddof=1) / math.sqrt(count) if count > 1 else 0.0
  return {
    "bpc": float(per_sequence.mean()),
    "bpc_stderr": float(stderr),
    "bpc_per_block": [float(v) for v in shares.mean(0)],
    "num_sequences": int(count),
    "num_t_samples": int(num_t * plan.num_blocks),
  }


def generate(
  trainer, sampler: Sampler, *, num_samples: int, seq_len: int, seed
):
  """`num_samples` unconditional sequences as text."""
  import jax
  import jax.numpy as jnp

  from dblocks_jax.data import text

  predict = trainer.predict_fn(sampler)
  masked = jnp.full((num_samples, seq_len), trainer.task.mask_id, jnp.int32)
  tokens = predict(trainer.arrays(), {"tokens": masked}, jax.random.key(seed))
  return [text.decode(row) for row in np.asarray(tokens)]


def write_sample_text(trainer, sampler, config, workdir, section) -> str:
  """`section.num_samples` sequences of `data.seq_len` characters (seed
  `section.seed`; `section`: `config.eval` or `config.sample`) written to
  `samples/step_<N>.txt`, one per line; returns the path."""
  samples = generate(
    trainer,
    sampler,
    num_samples=section.num_samples,
    seq_len=config.data.seq_len,
    seed=section.seed,
  )
  return write_text(workdir, trainer.step_count, samples)


def write_text(workdir: str, step: int, samples: list[str]) -> str:
  folder = os.path.join(workdir, "samples")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"step_{step}.txt")
  with open(path, "w") as f:
    f.write("\n".join(samples) + "\n")
  return path


FAMILY = MDMFamily()
