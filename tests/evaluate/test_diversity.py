"""Perplexity at a matched diversity: read off a decoding curve."""

import math

import numpy as np
import pytest

from dblocks_jax.evaluate import diversity


def test_reads_the_points_themselves_and_interpolates_log_perplexity():
  curve = [(0.2, 10.0), (0.4, 40.0), (0.3, 20.0)]  # Any order.
  assert diversity.perplexity_at_diversity(curve, 0.3) == pytest.approx(20.0)
  assert diversity.perplexity_at_diversity(curve, 0.4) == pytest.approx(40.0)
  # Half-way between 0.3 and 0.4 in share: the geometric mean of 20 and 40.
  assert diversity.perplexity_at_diversity(curve, 0.35) == pytest.approx(
    math.sqrt(20.0 * 40.0)
  )


def test_never_extrapolates():
  curve = [(0.2, 10.0), (0.4, 40.0)]
  assert math.isnan(diversity.perplexity_at_diversity(curve, 0.1))
  assert math.isnan(diversity.perplexity_at_diversity(curve, 0.41))


def test_points_of_one_share_are_averaged_and_a_bad_curve_is_an_error():
  # A knob that leaves the diversity where it was (a degenerate model).
  flat = [(0.3, 10.0), (0.3, 40.0)]
  assert diversity.perplexity_at_diversity(flat, 0.3) == pytest.approx(20.0)
  assert math.isnan(diversity.perplexity_at_diversity(flat, 0.31))
  with pytest.raises(ValueError, match="positive"):
    diversity.perplexity_at_diversity([(0.2, 0.0), (0.3, 12.0)], 0.25)
  with pytest.raises(ValueError, match="positive"):
    diversity.perplexity_at_diversity([], 0.25)


def test_matched_diversity_separates_models_that_defaults_confuse():
  # Two models trading perplexity for diversity along different curves:
  # at their defaults A looks better (lower perplexity) only because it is
  # less diverse; at the same diversity B is better.
  shares = np.linspace(0.2, 0.5, 4)
  a = [(s, 5.0 * math.exp(8 * s)) for s in shares]
  b = [(s, 3.0 * math.exp(8 * s)) for s in shares]
  default_a, default_b = a[0], b[-1]
  assert default_a[1] < default_b[1]
  at = default_b[0]
  assert diversity.perplexity_at_diversity(
    b, at
  ) < diversity.perplexity_at_diversity(a, at)
