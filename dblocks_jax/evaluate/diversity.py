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


def perplexity_at_diversity(curve, target: float) -> float:
  """A model's generative perplexity at a given diversity, read off its
  decoding curve.

  A decoding knob (the baseline's top-p, DiffusionBlocks' starting-noise
  temperature) trades perplexity for diversity; comparing two models at
  their default settings compares two points of different diversity.
  Reading both curves at one share of distinct bigrams compares the models.

  Args:
    curve: (distinct-bigram share, generative perplexity) points of one
      model, the knob swept; points of equal share are averaged (in log
      perplexity).
    target: the share to read the curve at.

  Returns:
    The perplexity at `target`, log-perplexity interpolated linearly in the
    share between the two points that bracket it; NaN when `target` lies
    outside the curve's range (never extrapolated: widen the sweep).
  """
  points = [(float(d), float(p)) for d, p in curve]
  if not points or not all(p > 0 for _, p in points):
    raise ValueError(f"curve={points} needs points of positive perplexity.")
  shares = np.unique([d for d, _ in points])
  log_perplexities = np.array(
    [np.mean([np.log(p) for d, p in points if d == share]) for share in shares]
  )
  if not shares[0] <= target <= shares[-1]:
    return float("nan")
  return float(np.exp(np.interp(target, shares, log_perplexities)))
