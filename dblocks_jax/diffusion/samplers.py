"""Euler and Heun samplers over routed denoisers (method_spec 1.2 and 1.7).

The probability-flow ODE step from sigma to sigma_next < sigma is
  z_next = z + (sigma_next - sigma) (z - D) / sigma,
the correct sign of the paper's Eq. 3-5 (the official code's form). A sampler
takes `denoise(z, i) -> (D, aux)` where i indexes the grid, so the caller routes
grid point i to its block and may return extra outputs (e.g. logits).
"""

from collections.abc import Callable, Sequence
from typing import Any

SAMPLERS = ("euler", "heun")

DenoiseFn = Callable[[Any, int], tuple[Any, Any]]


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
