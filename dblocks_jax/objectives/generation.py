"""Image generation as EDM denoising (method_spec 1.1, 2.2).

Training: y = an image (or a scaled latent), z = y + sigma eps, D = the
block's denoiser; loss = mean(w(sigma) * mean((D - y)^2)) with the EDM weight.
Labels are replaced by the null class with probability `label_dropout` (10%
for classifier-free guidance, DiT's recipe).

Sampling: z ~ sigma_max N(0, I), then Euler (or Heun) steps over a descending
grid, each grid point routed to its block, with guidance
D = D_uncond + scale (D_cond - D_uncond); the result is D at the last grid
point (sigma_min), as for classification. The number of steps is free of B.
The end-to-end baseline is the same objective over one block of all layers.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dblocks_jax import diffusion
from dblocks_jax.diffusion import samplers
from dblocks_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DiffusionGeneration:
  """The DiffusionBlocks generation objective and sampler.

  Attributes:
    denoise: `denoise(parts, z, sigma, labels, *, sigma_data) -> D` of the
      model family.
    num_classes: labels are 0..num_classes-1; num_classes is the null class.
    sigma_data: EDM sigma_data (0.5).
    max_weight: clamp of the EDM weight (0 = none).
    label_dropout: probability of training on the null class (guidance).
  """

  denoise: Callable
  num_classes: int
  sigma_data: float = 0.5
  max_weight: float = 0.0
  label_dropout: float = 0.1

  def loss(self, parts, batch, sigma, key, *, train: bool = True):
    """batch: image [b, H, W, C], label [b]; sigma: [b]. -> (loss, metrics)."""
    images, labels = batch["image"], batch["label"]
    noise_key, drop_key = jax.random.split(key)
    if train and self.label_dropout > 0:
      drop = jax.random.bernoulli(drop_key, self.label_dropout, labels.shape)
      labels = jnp.where(drop, self.num_classes, labels)
    z = images + sigma[:, None, None, None] * jax.random.normal(
      noise_key, images.shape
    )
    denoised = self.denoise(parts, z, sigma, labels, sigma_data=self.sigma_data)
    mse = jnp.mean((denoised - images) ** 2, axis=(1, 2, 3))
    weight = diffusion.loss_weight(sigma, self.sigma_data, self.max_weight)
    return jnp.mean(weight * mse), {"mse": jnp.mean(mse)}

  def check_guidance(self, guidance_scale: float) -> None:
    """Guidance needs the null class, which only label dropout trains."""
    if guidance_scale != 1.0 and self.label_dropout <= 0:
      raise ConfigError(
        f"sampler.guidance_scale={guidance_scale} needs a model trained with"
        " label dropout (model.label_dropout > 0), which learns the"
        " unconditional (null-class) denoiser; this one was trained with"
        " model.label_dropout=0. Set sampler.guidance_scale=1.0."
      )

  def sample(
    self,
    parts_for_block: Callable[[int], dict],
    labels: jax.Array,
    key: jax.Array,
    *,
    shape: tuple[int, int, int],
    sigmas,
    blocks,
    method: str = "euler",
    guidance_scale: float = 1.0,
  ) -> jax.Array:
    """Routed sampling of images of the given classes.

    Args:
      parts_for_block: block index -> that block's parts.
      labels: [batch] int classes (num_classes = unconditional).
      key: PRNG key of the initial noise.
      shape: (H, W, C) of one sample.
      sigmas: [N] descending grid.
      blocks: [N] routed block per grid point (static ints).
      method: "euler" or "heun".
      guidance_scale: classifier-free guidance scale (1 = off).

    Returns:
      [batch, H, W, C] samples in the model's data space.
    """
    self.check_guidance(guidance_scale)
    batch = labels.shape[0]
    z = float(sigmas[0]) * jax.random.normal(key, (batch, *shape))
    null = jnp.full_like(labels, self.num_classes)

    def denoise(z, i):
      parts = parts_for_block(int(blocks[i]))
      sigma = jnp.full((batch,), float(sigmas[i]), jnp.float32)
      if guidance_scale == 1.0:
        return self.denoise(
          parts, z, sigma, labels, sigma_data=self.sigma_data
        ), None
      # One batched call for the conditional and unconditional halves.
      both = self.denoise(
        parts,
        jnp.concatenate([z, z]),
        jnp.concatenate([sigma, sigma]),
        jnp.concatenate([labels, null]),
        sigma_data=self.sigma_data,
      )
      conditional, unconditional = jnp.split(both, 2)
      return samplers.classifier_free_guidance(
        conditional, unconditional, guidance_scale
      ), None

    denoised, _ = diffusion.sample(denoise, z, sigmas, method)
    return denoised
