"""The masking process of masked diffusion (MD4): levels are times t in [0, 1].

alpha(t) is the probability that a token is still unmasked at time t:
alpha(0) = 1 (clean) and alpha(1) = 0 (all masked), so a larger t is
noisier, as everywhere in the engine, and block 0 owns the most masked
range (it runs first when sampling). The continuous-time loss (method_spec
Eq. 8) weighs the cross-entropy of the masked tokens by -alpha'(t) /
(1 - alpha(t)); the expected number of masked tokens grows as
1 - alpha(t), so the partition equalises the mass of -alpha'(t): block b of
B owns [t_{b+1}, t_b] with t_b = alpha^-1(b / B) in block order, i.e.
alpha falls by 1/B across every block (Eq. 9-13). For MD4's linear schedule
alpha(t) = 1 - t the boundaries are t = 1, (B-1)/B, ..., 0.

Our choices where the paper is silent (UNVERIFIED there): gamma widens a
block's t-interval by gamma x its width on each side, clipped to [0, 1];
a block draws t uniformly in its widened interval.
"""

import dataclasses

import jax
import numpy as np

from dblocks_jax.diffusion import partition

SCHEDULES = ("linear", "cosine")


def alpha(t, schedule: str = "linear"):
  """The probability that a token is unmasked at time t (numpy or jax)."""
  xp = _xp(t)
  if schedule == "linear":
    return 1.0 - t
  if schedule == "cosine":  # MD4's cosine: 1 - cos(pi/2 (1 - t)).
    return 1.0 - xp.cos(0.5 * np.pi * (1.0 - t))
  raise _unknown(schedule)


def alpha_derivative(t, schedule: str = "linear"):
  """d alpha / dt (negative inside (0, 1))."""
  xp = _xp(t)
  if schedule == "linear":
    return -xp.ones_like(t)
  if schedule == "cosine":
    return -0.5 * np.pi * xp.sin(0.5 * np.pi * (1.0 - t))
  raise _unknown(schedule)


def alpha_inverse(a, schedule: str = "linear"):
  """The time at which alpha equals `a` (a in [0, 1])."""
  xp = _xp(a)
  if schedule == "linear":
    return 1.0 - a
  if schedule == "cosine":
    return 1.0 - xp.arccos(1.0 - a) / (0.5 * np.pi)
  raise _unknown(schedule)


def loss_weight(t, schedule: str = "linear"):
  """-alpha'(t) / (1 - alpha(t)): the weight of the masked tokens'
  cross-entropy at time t (1/t for the linear schedule)."""
  return -alpha_derivative(t, schedule) / (1.0 - alpha(t, schedule))


@dataclasses.dataclass(frozen=True)
class Masking:
  """MD4's masking schedule as a noise process (see the module docstring).

  Attributes:
    schedule: "linear" (alpha = 1 - t, MD4's default) or "cosine".
    t_min: the lowest time a block draws. The weight (1/t for the linear
      schedule) is unbounded near 0 while the masked count shrinks as t, so
      their product stays finite but single draws there are noisy; the
      ELBO's integral over [0, t_min] is left out.
  """

  schedule: str = "linear"
  t_min: float = 1e-3

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise _unknown(self.schedule)
    if not 0.0 <= self.t_min < 0.5:
      raise ValueError(f"t_min={self.t_min} must be in [0, 0.5).")

  def boundaries(
    self, num_blocks: int, kind: str = "equiprobable", explicit=None
  ) -> np.ndarray:
    """[B + 1] descending times: "equiprobable" (alpha falls by 1/B across
    each block) or "explicit" (`explicit`: B + 1 times from 1 down to 0)."""
    if num_blocks < 1:
      raise ValueError(f"num_blocks={num_blocks} must be at least 1.")
    if kind == "explicit":
      values = np.asarray(explicit if explicit is not None else (), np.float64)
      if values.shape != (num_blocks + 1,) or values[0] != 1 or values[-1]:
        raise ValueError(
          f"boundaries={tuple(values.tolist())} must be {num_blocks + 1}"
          " times from 1 down to 0, so that the blocks cover [0, 1]."
        )
      if np.any(np.diff(values) >= 0):
        raise ValueError(
          f"boundaries={tuple(values.tolist())} must descend strictly, from"
          " 1 (all masked, block 0) down to 0."
        )
      return values.copy()
    if kind != "equiprobable":
      raise ValueError(
        f"partition={kind!r} is unknown for masking; choose 'equiprobable'"
        " or 'explicit'."
      )
    levels = np.arange(num_blocks + 1, dtype=np.float64) / num_blocks
    times = alpha_inverse(levels, self.schedule)  # alpha = b / B.
    times[0], times[-1] = 1.0, 0.0  # Exact ends.
    return times

  def widen(self, boundaries: np.ndarray, gamma: float) -> np.ndarray:
    """[B, 2] (lo, hi) per block, block order: each nominal interval
    widened by gamma x its width on each side, clipped to [0, 1]."""
    partition.check_gamma(gamma)
    bounds = np.asarray(boundaries, np.float64)
    hi, lo = bounds[:-1], bounds[1:]
    width = hi - lo
    return np.stack(
      [
        np.maximum(lo - gamma * width, 0.0),
        np.minimum(hi + gamma * width, 1.0),
      ],
      axis=-1,
    )

  def sample(self, key: jax.Array, shape, lo, hi) -> jax.Array:
    """Times uniform in [max(lo, t_min), hi]."""
    lo = jax.numpy.maximum(lo, self.t_min)
    return jax.random.uniform(key, shape, minval=lo, maxval=hi)

  def route(self, levels, boundaries: np.ndarray):
    """The block whose nominal interval holds each time (t = 1 -> block 0)."""
    return partition.route(levels, np.asarray(boundaries)[::-1])

  def grid(self, num_steps: int, kind: str = "") -> np.ndarray:
    """[num_steps] start times of the sampler's steps, most masked first:
    alpha rises by 1/N per step (equal numbers of tokens unmasked); step i
    goes from its time to the next one, the last to t = 0. A step's start
    can sit on a block boundary, so `BlockPlan.grid` routes each step by
    its middle (`routing_levels`)."""
    if num_steps < 1:
      raise ValueError(f"num_steps={num_steps}: need at least 1.")
    if kind not in ("", "uniform"):
      raise ValueError(f"grid={kind!r} is unknown for masking; use 'uniform'.")
    levels = np.arange(num_steps, dtype=np.float64) / num_steps
    times = alpha_inverse(levels, self.schedule)
    times[0] = 1.0
    return times

  def routing_levels(self, starts: np.ndarray) -> np.ndarray:
    """The middle of each sampler step [next start (0 after the last),
    start]: what `BlockPlan.grid` routes, so that a step starting on a
    block boundary runs the block that owns the interval it covers."""
    starts = np.asarray(starts, np.float64)
    return 0.5 * (starts + np.append(starts[1:], 0.0))

  def describe(self) -> dict:
    return {"process": "masking", "schedule": self.schedule}


def _xp(x):
  return (
    np if isinstance(x, (float, int, np.ndarray, np.generic)) else jax.numpy
  )


def _unknown(schedule) -> ValueError:
  return ValueError(
    f"schedule={schedule!r} is unknown; choose one of {SCHEDULES}."
  )
