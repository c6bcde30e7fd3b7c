"""How varied generated text is: distinct n-grams.

Generative perplexity alone rewards repetition (greedy decoding, a low
top-p, a cold sampler), so the language-model evaluators report it beside
the share of distinct token n-grams. The ratio falls as more text is
counted, so compare it only between sets of the same size.
"""

import numpy as np


def distinct_ngrams(tokens: np.ndarray, n: int = 2) -> float:
  """Distinct n-grams over all n-grams, counted within each row.

  tokens: [sequences, length] ids. Returns a value in (0, 1]; 1 when no
  n-gram repeats anywhere.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [sequences, length], got {tokens.shape}.")
  if n < 1 or tokens.shape[1] < n or not len(tokens):
    raise ValueError(
      f"n={n} must be in [1, length={tokens.shape[1]}] with at least one"
      " sequence."
    )
  windows = np.lib.stride_tricks.sliding_window_view(tokens, n, axis=1)
  grams = windows.reshape(-1, n)
  return len(np.unique(grams, axis=0)) / len(grams)
