"""Means over seeds, Student-t intervals and paired verdicts."""

import math

import pytest

from dblocks_jax.evaluate import intervals


def test_interval_of_three_values_has_the_t_quantile():
  interval = intervals.mean_interval([1.0, 2.0, 3.0])
  # t(0.975, 2) = 4.3027; the sample standard deviation is 1.
  assert interval.mean == pytest.approx(2.0)
  assert interval.half_width == pytest.approx(4.302653 / math.sqrt(3), 1e-6)
  assert (interval.low, interval.high) == pytest.approx(
    (2 - interval.half_width, 2 + interval.half_width)
  )
  assert interval.n == 3
  assert interval.format(1) == "2.0 +- 2.5 (n=3)"


def test_wider_confidence_gives_a_wider_interval():
  values = [0.61, 0.64, 0.60, 0.66]
  narrow = intervals.mean_interval(values, confidence=0.8)
  wide = intervals.mean_interval(values, confidence=0.99)
  assert 0 < narrow.half_width < wide.half_width


def test_one_value_has_no_interval_and_no_verdict():
  interval = intervals.mean_interval([0.7])
  assert interval.mean == 0.7 and math.isnan(interval.half_width)
  assert interval.format() == "0.70 (n=1)"
  assert intervals.verdict(interval, higher_is_better=True) == "unknown"


def test_paired_difference_uses_the_common_seeds():
  treated = {42: 1.0, 43: 2.0, 44: 3.5}
  baseline = {42: 0.5, 43: 1.4, 44: 3.0, 45: 9.0}
  difference = intervals.paired_difference(treated, baseline)
  assert difference.n == 3
  assert difference.mean == pytest.approx((0.5 + 0.6 + 0.5) / 3)
  # The seed moves both arms alike: the paired interval is far narrower
  # than either arm's own.
  own = intervals.mean_interval(list(treated.values()))
  assert difference.half_width < own.half_width / 5


@pytest.mark.parametrize(
  ("differences", "higher_is_better", "expected"),
  [
    ([0.5, 0.6, 0.5], True, "better"),
    ([0.5, 0.6, 0.5], False, "worse"),
    ([-0.5, -0.6, -0.5], True, "worse"),
    ([-0.5, -0.6, -0.5], False, "better"),
    ([-0.5, 0.6, 0.1], True, "level"),
  ],
)
def test_verdict_follows_the_sign_of_the_interval(
  differences, higher_is_better, expected
):
  difference = intervals.mean_interval(differences)
  assert intervals.verdict(difference, higher_is_better) == expected


@pytest.mark.parametrize(
  "values", [[], [1.0, float("nan")], [[1.0, 2.0]]], ids=str
)
def test_bad_values_are_refused(values):
  with pytest.raises(ValueError, match="values"):
    intervals.mean_interval(values)


def test_no_common_seed_is_refused():
  with pytest.raises(ValueError, match="no seed in common"):
    intervals.paired_difference({1: 0.0}, {2: 0.0})
