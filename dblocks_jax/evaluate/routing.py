"""What routed inference needs from a run: the grid and each block's parts."""

from dblocks_jax import diffusion
from dblocks_jax.blockwise import parts as parts_lib


def sampler_grid(experiment, config):
  """(sigmas [N], routed blocks [N]) of `config.sampler` (N = num_steps)."""
  s, d = config.sampler, config.diffusion
  num_steps = s.num_steps or experiment.plan.num_blocks
  sigmas = diffusion.sigma_grid(
    s.grid, num_steps, d.sigma_min, d.sigma_max, d.p_mean, d.p_std, s.rho
  )
  return sigmas, experiment.plan.route(sigmas)


def parts_for_block_fn(graphdefs, state):
  """block -> the modules of that block (its own, shared and fixed parts)."""
  shared = state["shared"]["params"] if state["shared"] else {}

  def parts_for_block(b):
    return {
      **parts_lib.merge(graphdefs.fixed, state["fixed"]),
      **parts_lib.merge(graphdefs.shared, shared),
      **parts_lib.merge(graphdefs.blocks[b], state["blocks"][b]["params"]),
    }

  return parts_for_block
