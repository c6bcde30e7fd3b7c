"""Image generation as EDM denoising (method_spec 1.1, 2.2).

Training: y = an image (or a scaled latent), z = y + sigma eps, D = the
block's denoiser; loss = mean(w(sigma) * mean((D - y)^2)) with the EDM weight.
Labels are replaced by the null class with probability `label_dropout` (10%
for classifier-free guidance, DiT's recipe).

Sampling: z ~ sigma_max N(0, I), then Euler (or Heun) steps over a descending
grid, each grid point routed to its block, with guidance
D = D_uncond + scale (D_cond - D_uncond); the result is D at the last grid
point (sigma_min), as for classification. The number of steps is free of B.
Consecutive steps in one block run as one scanned body
(`diffusion.sample_routed`), so a jitted sampler compiles each block once
whatever the number of steps.
The end-to-end baseline is the same task over one block of all layers.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dblocks_jax import diffusion
from dblocks_jax.diffusion import edm, samplers
from dblocks_jax.tasks.batches import Field


def standard_denoise(parts, z, sigma, labels, *, sigma_data: float):
  """The EDM denoiser of a network made of your own parts.

  Parts:
    noise_embed  c_noise(sigma) [b] -> cond [b, c]
    label_embed  labels [b] -> [b, c] (added to cond; the null class is
                 `num_classes`)
    stem         c_in(sigma) z -> h
    layers       (h, cond) -> h: the block's layers
    readout      (h, cond) -> F, shaped like z (extra trailing channels, such
                 as DiT's learned variance, are dropped)

  Returns:
    D = c_skip z + c_out F, shaped like z.
  """
  cond = parts["noise_embed"](edm.c_noise(sigma)) + parts["label_embed"](labels)
  scale = edm.c_in(sigma, sigma_data).reshape((-1,) + (1,) * (z.ndim - 1))
  h = parts["layers"](parts["stem"](scale * z), cond)
  out = parts["readout"](h, cond)[..., : z.shape[-1]]
  return edm.denoised(z, out, sigma, sigma_data)


@dataclasses.dataclass(frozen=True)
class DiffusionGeneration:
  """The DiffusionBlocks generation task (a `Task`).

  Batches are {"image": [b, H, W, C], "label": [b] int}; `predict` takes
  {"label": [b]} and returns samples [b, *sample_shape].

  Attributes:
    num_classes: labels are 0..num_classes-1; num_classes is the null class.
    sample_shape: (H, W, C) of one sample.
    denoise: `denoise(parts, z, sigma, labels, *, sigma_data) -> D`;
      `standard_denoise` by default.
    sigma_data: EDM sigma_data (0.5).
    max_weight: clamp of the EDM weight (0 = none).
    label_dropout: probability of training on the null class (guidance).
    guidance_scale: classifier-free guidance scale at sampling (1 = off).
  """

  num_classes: int
  sample_shape: tuple[int, ...]
  denoise: Callable = standard_denoise
  sigma_data: float = 0.5
  max_weight: float = 0.0
  label_dropout: float = 0.1
  guidance_scale: float = 1.0

  def __post_init__(self):
    if self.guidance_scale != 1.0 and self.label_dropout <= 0:
      raise ValueError(
        f"guidance_scale={self.guidance_scale} needs a model trained with"
        " label dropout (label_dropout > 0), which learns the unconditional"
        " (null-class) denoiser; this one has label_dropout=0. Set"
        " guidance_scale=1.0."
      )

  def batch_fields(self, parts, example) -> dict[str, Field]:
    """Images [batch, *sample_shape] (training only) and their labels
    [batch] in [0, num_classes] (num_classes: the null class, unconditional
    samples)."""
    del parts, example
    return {
      "image": Field("float", rank=len(self.sample_shape), in_predict=False),
      "label": Field(
        "int", rank=0, num_classes=self.num_classes + 1, meaning="class ids"
      ),
    }

  def loss(self, parts, batch, level, key, *, train: bool = True):
    """batch: image [b, H, W, C], label [b]; level: sigma [b]."""
    images, labels = batch["image"], batch["label"]
    noise_key, drop_key = jax.random.split(key)
    if train and self.label_dropout > 0:
      drop = jax.random.bernoulli(drop_key, self.label_dropout, labels.shape)
      labels = jnp.where(drop, self.num_classes, labels)
    sigma = level.reshape((-1,) + (1,) * (images.ndim - 1))
    z = images + sigma * jax.random.normal(noise_key, images.shape)
    denoised = self.denoise(parts, z, level, labels, sigma_data=self.sigma_data)
    mse = jnp.mean((denoised - images) ** 2, axis=tuple(range(1, images.ndim)))
    weight = diffusion.loss_weight(level, self.sigma_data, self.max_weight)
    return jnp.mean(weight * mse), {"mse": jnp.mean(mse)}

  def predict(self, parts_for_block, batch, key, *, sampler):
    """Routed sampling of one image per label in `batch["label"]`.

    Returns:
      [b, *sample_shape] samples in the model's data space.
    """
    if sampler is None:
      raise ValueError(
        "DiffusionGeneration needs a sampler (the routed grid); pass"
        " sampler=Sampler.of(plan, num_steps)."
      )
    labels = batch["label"]
    size = labels.shape[0]
    z = float(sampler.levels[0]) * jax.random.normal(
      key, (size, *self.sample_shape)
    )

    def denoise(z, sigma, block):
      parts = parts_for_block(block)
      return self.guided(parts, z, jnp.full((size,), sigma), labels), None

    denoised, _ = diffusion.sample_routed(
      denoise, z, sampler.levels, sampler.blocks, sampler.method
    )
    return denoised

  def guided(self, parts, z, sigma, labels):
    """The denoiser with classifier-free guidance at `guidance_scale`.

    Args:
      z: [b, *sample_shape] noisy samples; sigma: [b] their levels;
        labels: [b] class ids.

    Returns:
      D [b, *sample_shape]: the conditional denoiser (scale 1), or
      D_uncond + scale (D_cond - D_uncond), both halves in one batched call.
    """
    if self.guidance_scale == 1.0:
      return self.denoise(parts, z, sigma, labels, sigma_data=self.sigma_data)
    null = jnp.full_like(labels, self.num_classes)
    both = self.denoise(
      parts,
      jnp.concatenate([z, z]),
      jnp.concatenate([sigma, sigma]),
      jnp.concatenate([labels, null]),
      sigma_data=self.sigma_data,
    )
    conditional, unconditional = jnp.split(both, 2)
    return samplers.classifier_free_guidance(
      conditional, unconditional, self.guidance_scale
    )
