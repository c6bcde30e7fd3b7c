"""The DiffusionBlocks method as pure functions: noise, partitions, EDM, grids,
samplers, and the noise processes that bundle them for the engine. Knows
nothing of models or training loops."""

from dblocks_jax.diffusion.edm import (
  c_in,
  c_noise,
  c_out,
  c_skip,
  denoised,
  loss_weight,
)
from dblocks_jax.diffusion.grids import (
  GRIDS,
  cdf_sigmas,
  karras_sigmas,
  sigma_grid,
)
from dblocks_jax.diffusion.noise import (
  lognormal_cdf,
  lognormal_quantile,
  sample_log_uniform,
  sample_truncated_lognormal,
)
from dblocks_jax.diffusion.partition import (
  PARTITIONS,
  block_boundaries,
  route,
  training_ranges,
)
from dblocks_jax.diffusion.process import EDM, NoiseProcess
from dblocks_jax.diffusion.samplers import (
  SAMPLERS,
  classifier_free_guidance,
  euler_step,
  heun_step,
  sample,
  sample_routed,
)

__all__ = [
  "EDM",
  "NoiseProcess",
  "GRIDS",
  "PARTITIONS",
  "SAMPLERS",
  "block_boundaries",
  "c_in",
  "c_noise",
  "c_out",
  "c_skip",
  "cdf_sigmas",
  "classifier_free_guidance",
  "denoised",
  "euler_step",
  "heun_step",
  "karras_sigmas",
  "lognormal_cdf",
  "lognormal_quantile",
  "loss_weight",
  "route",
  "sample",
  "sample_log_uniform",
  "sample_routed",
  "sample_truncated_lognormal",
  "sigma_grid",
  "training_ranges",
]
