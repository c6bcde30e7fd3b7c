"""Means over seeds with Student-t intervals, and the verdict of a paired
comparison: what a DiffusionBlocks-vs-baseline claim reports.

A run's metric is one draw per seed; with n seeds the mean's 95% interval is
mean +- t(0.975, n - 1) s / sqrt(n) (s the sample standard deviation). Two
arms trained with the same seeds are compared by the per-seed differences,
whose interval is narrower than the two arms' intervals would suggest when
the seed moves both arms alike (data order, initialisation).
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean and its confidence interval over `n` values.

  With one value the interval is unknown: `half_width` is NaN.
  """

  mean: float
  half_width: float
  n: int
  confidence: float = CONFIDENCE

  @property
  def low(self) -> float:
    return self.mean - self.half_width

  @property
  def high(self) -> float:
    return self.mean + self.half_width

  def format(self, digits: int = 2) -> str:
    """`mean +- half_width (n=3)`; `mean (n=1)` without an interval."""
    if math.isnan(self.half_width):
      return f"{self.mean:.{digits}f} (n={self.n})"
    return (
      f"{self.mean:.{digits}f} +- {self.half_width:.{digits}f} (n={self.n})"
    )

  def as_dict(self) -> dict:
    return dataclasses.asdict(self) | {"low": self.low, "high": self.high}


def mean_interval(
  values: Sequence[float], confidence: float = CONFIDENCE
) -> Interval:
  """The mean of `values` and its Student-t interval.

  Args:
    values: one metric per seed, at least one, all finite.
    confidence: the interval's coverage, in (0, 1).

  Raises:
    ValueError: no values, a value that is not finite, or a confidence
      outside (0, 1).
  """
  x = np.asarray(values, np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f"need a non-empty list of values, got {values!r}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"values must be finite, got {values!r}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence={confidence} must be in (0, 1)")
  n = int(x.size)
  if n == 1:
    return Interval(float(x[0]), math.nan, 1, confidence)
  quantile = stats.t.ppf(0.5 + confidence / 2, df=n - 1)
  half = float(quantile * x.std(ddof=1) / math.sqrt(n))
  return Interval(float(x.mean()), half, n, confidence)


def paired_difference(
  treated: Mapping[int, float],
  baseline: Mapping[int, float],
  confidence: float = CONFIDENCE,
) -> Interval:
  """The mean of `treated[seed] - baseline[seed]` over the seeds both have,
  with its interval.

  Raises:
    ValueError: the two share no seed.
  """
  seeds = sorted(set(treated) & set(baseline))
  if not seeds:
    raise ValueError(
      f"no seed in common: {sorted(treated)} against {sorted(baseline)}"
    )
  return mean_interval(
    [treated[s] - baseline[s] for s in seeds], confidence=confidence
  )


def verdict(difference: Interval, higher_is_better: bool) -> str:
  """ "better", "worse" or "level" for the treated arm: better or worse only
  when the difference's interval excludes 0; "unknown" without an interval
  (one seed)."""
  if math.isnan(difference.half_width):
    return "unknown"
  if difference.low > 0:
    return "better" if higher_is_better else "worse"
  if difference.high < 0:
    return "worse" if higher_is_better else "better"
  return "level"
