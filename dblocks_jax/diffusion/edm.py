"""EDM preconditioning and loss weight (Karras et al. 2022; method_spec 1.1).

D(z; sigma) = c_skip(sigma) z + c_out(sigma) F(c_in(sigma) z; c_noise(sigma)).
All functions are elementwise in sigma.
"""

import jax.numpy as jnp


def c_skip(sigma, sigma_data: float = 0.5):
  return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma, sigma_data: float = 0.5):
  return sigma * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)


def c_in(sigma, sigma_data: float = 0.5):
  return 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)


def c_noise(sigma):
  return 0.25 * jnp.log(sigma)


def loss_weight(sigma, sigma_data: float = 0.5, max_weight: float = 0.0):
  """EDM lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

  Args:
    sigma: noise levels.
    sigma_data: standard deviation of the clean targets.
    max_weight: clamp the weight at this value when > 0 (0 = no clamp, the
      official behaviour; LM ports clamp at 5-20).
  """
  weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
  if max_weight > 0:
    weight = jnp.minimum(weight, max_weight)
  return weight


def denoised(z, network_output, sigma, sigma_data: float = 0.5):
  """D = c_skip z + c_out F, with sigma broadcast over trailing axes of z.

  Args:
    z: [batch, ...] noisy target.
    network_output: F, same shape as z.
    sigma: [batch].
    sigma_data: standard deviation of the clean targets.
  """
  s = jnp.reshape(sigma, sigma.shape + (1,) * (z.ndim - sigma.ndim))
  return c_skip(s, sigma_data) * z + c_out(s, sigma_data) * network_output
