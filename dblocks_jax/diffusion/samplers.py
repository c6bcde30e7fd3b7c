"""Euler and Heun samplers over routed denoisers (method_spec 1.2 and 1.7).

The probability-flow ODE step from sigma to sigma_next < sigma is
  z_next = z + (sigma_next - sigma) (z - D) / sigma,
the correct sign of the paper's Eq. 3-5 (the official code's form). A sampler
takes `denoise(z, i) -> (D, aux)` where i indexes the grid, so the caller routes
grid point i to its block and may return extra outputs (e.g. logits).
"""

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SAMPLERS = ("euler", "heun")

DenoiseFn = Callable[[Any, int], tuple[Any, Any]]
# denoise(z, sigma, block): sigma a traced scalar, block a Python int.
RoutedDenoiseFn = Callable[[Any, jax.Array, int], tuple[Any, Any]]


def euler_step(z, denoised, sigma: float, sigma_next: float):
  """One Euler step of the PF-ODE: z + (sigma_next - sigma) (z - D) / sigma."""
  return z + (sigma_next - sigma) * (z - denoised) / sigma


def heun_step(z, denoised, z_euler, denoised_next, sigma, sigma_next):
  """Heun's correction: the mean of the slopes at sigma and sigma_next."""
  slope = (z - denoised) / sigma
  slope_next = (z_euler - denoised_next) / sigma_next
  return z + (sigma_next - sigma) * 0.5 * (slope + slope_next)


def classifier_free_guidance(conditional, unconditional, scale: float):
  """uncond + scale (cond - uncond); scale 1 is the conditional model."""
  return unconditional + scale * (conditional - unconditional)


def sample(
  denoise: DenoiseFn,
  z,
  sigmas: Sequence[float],
  method: str = "euler",
):
  """Runs the sampler over a descending grid.

  Takes len(sigmas) - 1 steps, then evaluates the denoiser once more at the
  last grid point (sigma_min) and returns that evaluation, as the official code
  does. Euler costs one evaluation per grid point; Heun two per step.

  Args:
    denoise: `denoise(z, i) -> (D, aux)` at grid point i.
    z: initial noisy state, e.g. sigma_max * N(0, I).
    sigmas: [N] descending grid.
    method: "euler" or "heun".

  Returns:
    (D, aux) of the final evaluation at sigmas[-1].
  """
  if method not in SAMPLERS:
    raise ValueError(f"method={method!r} is unknown; choose one of {SAMPLERS}.")
  sigmas = [float(s) for s in sigmas]
  for i in range(len(sigmas) - 1):
    d, _ = denoise(z, i)
    z_euler = euler_step(z, d, sigmas[i], sigmas[i + 1])
    if method == "heun":
      d_next, _ = denoise(z_euler, i + 1)
      z = heun_step(z, d, z_euler, d_next, sigmas[i], sigmas[i + 1])
    else:
      z = z_euler
  return denoise(z, len(sigmas) - 1)


def sample_routed(
  denoise: RoutedDenoiseFn,
  z,
  sigmas: Sequence[float],
  blocks: Sequence[int],
  method: str = "euler",
):
  """`sample` with the grid's levels traced: one `lax.scan` per run of
  consecutive steps in the same block, so K steps of one block compile its
  denoiser once, not K times (a tied-weight block iterated K times).

  Args:
    denoise: `denoise(z, sigma, block) -> (D, aux)`; sigma is a float32
      scalar (traced inside a run), block the grid point's block.
    z: initial noisy state.
    sigmas: [N] descending grid.
    blocks: [N] the block of each grid point.
    method: "euler" or "heun" (Heun's second evaluation is in the next grid
      point's block; a run holds the steps whose two blocks agree).

  Returns:
    (D, aux) of the final evaluation at sigmas[-1].
  """
  if method not in SAMPLERS:
    raise ValueError(f"method={method!r} is unknown; choose one of {SAMPLERS}.")
  if len(sigmas) != len(blocks):
    raise ValueError(
      f"sigmas ({len(sigmas)}) and blocks ({len(blocks)}) must have one"
      " entry per grid point."
    )
  levels = np.asarray(sigmas, np.float32)
  blocks = [int(b) for b in blocks]

  def run_key(i):
    return (blocks[i], blocks[i + 1]) if method == "heun" else blocks[i]

  for key, steps in itertools.groupby(range(len(levels) - 1), run_key):
    steps = np.fromiter(steps, int)
    block, block_next = key if method == "heun" else (key, key)
    pairs = jnp.asarray(np.stack([levels[steps], levels[steps + 1]], -1))

    def step(z, pair, block=block, block_next=block_next):
      sigma, sigma_next = pair[0], pair[1]
      d, _ = denoise(z, sigma, block)
      z_euler = euler_step(z, d, sigma, sigma_next)
      if method != "heun":
        return z_euler, None
      d_next, _ = denoise(z_euler, sigma_next, block_next)
      return heun_step(z, d, z_euler, d_next, sigma, sigma_next), None

    z, _ = jax.lax.scan(step, z, pairs)
  return denoise(z, jnp.float32(levels[-1]), blocks[-1])
