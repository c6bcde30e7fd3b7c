"""Judging generated text with a language model this project trained.

There is no ELBO for the autoregressive DiffusionBlocks model, so its text
is judged as the paper judges it (method_spec 2.4), with a judge model in
place of Llama-2-7B / GPT2-XL, which cannot run offline: an end-to-end AR
LM trained by this project on the same corpus and tokenizer (an `ar_*`
config with `:e2e`, usually larger), named by its workdir.

* Generative perplexity: exp(total NLL / total tokens) of the continuations
  under the judge, each conditioned on its prompt. The judge's perplexity of
  the true continuations (`reference_gen_ppl`) is the scale to read it by.
* MAUVE (Pillutla et al. 2021, the `mauve-text` package, given features so
  that nothing is downloaded) between the continuations and the references,
  in the judge's feature space: the final-RMSNorm state at the last token of
  the continuation, read without its prompt (with the prompt, a
  continuation and its reference share most of their context and MAUVE
  says little: 0.995 for a model whose generative perplexity is 5x the
  references' on the Python docs).

`families.evaluation.load_judge` restores the judge of a workdir.
"""

import functools

import jax
import numpy as np
import optax

from dblocks_jax import errors
from dblocks_jax.data import sequences


class Judge:
  """A trained causal LM as the judge of generated text.

  Args:
    model: `model(arrays)` -> the LM: `lm(tokens [b, t]) -> logits [b, t,
      vocab]` and `lm.features(tokens) -> [b, t, width]` (the head's input);
      called inside `jax.jit`.
    arrays: the LM's arrays (on the device).
    description: what identifies the judge (for eval.json).
  """

  def __init__(self, model, arrays, *, description: dict):
    self.description = dict(description)

    @functools.partial(jax.jit, static_argnums=2)
    def nll(arrays, tokens, start):
      logits = model(arrays)(tokens)[:, start - 1 : -1]
      return optax.softmax_cross_entropy_with_integer_labels(
        logits, tokens[:, start:]
      ).sum(-1)

    @jax.jit
    def features(arrays, tokens):
      return model(arrays).features(tokens)[:, -1]

    self._nll = lambda tokens, start: nll(arrays, tokens, start)
    self._features = lambda tokens: features(arrays, tokens)

  def perplexity(self, prompts, continuations, *, batch_size: int) -> float:
    """exp(NLL per token) of `continuations` [n, C] after `prompts`
    [n, P] (P >= 1)."""
    start = prompts.shape[1]
    rows = np.concatenate([prompts, continuations], axis=1).astype(np.int32)
    total = sequences.map_in_batches(
      lambda tokens, _: self._nll(tokens, start), rows, batch_size
    )
    return float(np.exp(total.sum() / continuations.size))

  def features(self, texts, *, batch_size: int):
    """texts [n, C] token ids, read on their own -> [n, width] features."""
    return sequences.map_in_batches(
      lambda tokens, _: self._features(tokens),
      np.asarray(texts, np.int32),
      batch_size,
    )


def mauve(p_features, q_features, *, scaling: float, seed: int) -> float:
  """MAUVE between two feature sets ([n, d], [m, d]), the package's
  defaults otherwise (PCA to 90% variance, k-means with n / 10 buckets)."""
  mauve_text = errors.optional_import(
    "mauve", "the language models' evaluation (MAUVE)"
  )
  out = mauve_text.compute_mauve(
    p_features=np.asarray(p_features, np.float32),
    q_features=np.asarray(q_features, np.float32),
    mauve_scaling_factor=scaling,
    seed=seed,
    verbose=False,
  )
  return float(out.mauve)
