"""ViT classification: the DiffusionBlocks ViT and its end-to-end baseline.

DiffusionBlocks ViT (the official model, method_spec 2.1): the noisy,
L2-normalised label embedding, scaled by c_in(sigma), takes the place of the
CLS token; every layer is AdaLN-Zero conditioned on c_noise(sigma); the final
LayerNorm output at token 0 is the network output F, the denoised embedding is
D = c_skip z + c_out F, and a final adaLN + linear classifier maps D to logits.

Parts (how the block-wise engine splits the model):
  stem         patch embedding, position embedding, embedding dropout
  noise_embed  sinusoid(c_noise) -> MLP
  targets      the label-embedding table (diffusion target space)
  layers       one block's transformer layers
  readout      final LayerNorm, final adaLN, classifier

Baseline (HF ViTForImageClassification): CLS token, the same stem and layers
without conditioning, final LayerNorm, linear head on the CLS token.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from dblocks_jax.diffusion import edm
from dblocks_jax.nn import adaln, embed, init, layers


class ViTStem(nnx.Module):
  """[batch, H, W, C] images and a first token -> [batch, 1 + P, width]."""

  def __init__(
    self, image_shape, patch_size: int, width: int, *, dropout, rngs
  ):
    h, w, c = image_shape
    num_patches = (h // patch_size) * (w // patch_size)
    self.patch_embed = embed.PatchEmbed(patch_size, c, width, rngs=rngs)
    self.position = nnx.Param(
      init.TRUNC_NORMAL_002(rngs.params(), (1, num_patches + 1, width))
    )
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, images: jax.Array, first_token: jax.Array, *, rngs=None):
    """first_token: [batch, width] (noisy label or CLS)."""
    patches = self.patch_embed(images)
    tokens = jnp.concatenate([first_token[:, None], patches], axis=1)
    tokens = tokens + self.position[...]
    return self.dropout(tokens, rngs=rngs, deterministic=rngs is None)


class DiffusionReadout(nnx.Module):
  """Token 0 -> D (EDM) -> adaLN -> logits (official readout)."""

  def __init__(
    self, width, cond_dim, num_classes, *, layer_norm_eps, modulation, rngs
  ):
    self.norm = nnx.LayerNorm(width, epsilon=layer_norm_eps, rngs=rngs)
    self.adaln = adaln.AdaLNModulation(
      cond_dim, width, 2, mode=modulation, rngs=rngs
    )
    self.head = init.linear(width, num_classes, zero=True, rngs=rngs)

  def __call__(self, tokens, z, sigma, cond, *, sigma_data: float):
    """tokens: [batch, T, width], z: [batch, width], sigma: [batch].

    Returns:
      logits: [batch, num_classes], denoised: [batch, width].
    """
    out = self.norm(tokens)[:, 0]
    denoised = edm.denoised(z, out, sigma, sigma_data)
    shift, scale = self.adaln(cond)
    return self.head(adaln.modulate(denoised, shift, scale)), denoised


class BaselineViT(nnx.Module):
  """The end-to-end ViT: CLS token, plain layers, CE on the CLS logits."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    image_shape,
    num_classes: int,
    *,
    rngs,
  ):
    m = config.model
    self.cls = nnx.Param(init.TRUNC_NORMAL_002(rngs.params(), (1, m.width)))
    self.stem = make_stem(config, image_shape, rngs)
    self.layers = make_layers(config, m.num_layers, rngs, conditioned=False)
    self.norm = nnx.LayerNorm(m.width, epsilon=m.layer_norm_eps, rngs=rngs)
    self.head = init.linear(m.width, num_classes, rngs=rngs)

  def __call__(self, images: jax.Array, *, rngs=None) -> jax.Array:
    """images: [batch, H, W, C] -> logits [batch, num_classes]."""
    cls = jnp.broadcast_to(self.cls[...], (images.shape[0], self.cls.shape[-1]))
    h = self.layers(self.stem(images, cls, rngs=rngs), rngs=rngs)
    return self.head(self.norm(h)[:, 0])


def make_stem(config, image_shape, rngs) -> ViTStem:
  m = config.model
  return ViTStem(
    image_shape, m.patch_size, m.width, dropout=m.dropout, rngs=rngs
  )


def make_layers(config, num_layers: int, rngs, *, conditioned=True):
  m = config.model
  return layers.LayerStack(
    num_layers,
    width=m.width,
    num_heads=m.num_heads,
    mlp_dim=m.mlp_dim,
    cond_dim=m.cond_dim if conditioned else None,
    dropout=m.dropout,
    attention_dropout=m.attention_dropout,
    layer_norm_eps=m.layer_norm_eps,
    modulation=m.modulation,
    remat=m.remat,
    rngs=rngs,
  )


def make_shell(config, image_shape, num_classes, rngs) -> dict[str, nnx.Module]:
  """The parts outside the layers, minus the target table."""
  m = config.model
  return {
    "stem": make_stem(config, image_shape, rngs),
    "noise_embed": embed.NoiseLevelEmbedder(
      m.cond_dim, frequency_dim=m.frequency_dim, rngs=rngs
    ),
    "readout": DiffusionReadout(
      m.width,
      m.cond_dim,
      num_classes,
      layer_norm_eps=m.layer_norm_eps,
      modulation=m.modulation,
      rngs=rngs,
    ),
  }


def make_targets(config, num_classes, *, trainable, rngs) -> embed.TargetTable:
  return embed.TargetTable(
    num_classes, config.model.width, trainable=trainable, rngs=rngs
  )


def denoise(
  parts: Mapping[str, nnx.Module],
  images: jax.Array,
  z: jax.Array,
  sigma: jax.Array,
  *,
  sigma_data: float,
  rngs=None,
) -> tuple[jax.Array, jax.Array]:
  """One block's denoiser on a noisy label embedding.

  Args:
    parts: stem, noise_embed, layers, readout (see module docstring).
    images: [batch, H, W, C].
    z: [batch, width] noisy label embedding z = y + sigma eps.
    sigma: [batch] noise levels.
    sigma_data: EDM sigma_data.
    rngs: dropout RNGs, None for deterministic.

  Returns:
    logits: [batch, num_classes], denoised: [batch, width].
  """
  cond = parts["noise_embed"](edm.c_noise(sigma))
  first = edm.c_in(sigma, sigma_data)[:, None] * z
  tokens = parts["stem"](images, first, rngs=rngs)
  tokens = parts["layers"](tokens, cond, rngs=rngs)
  return parts["readout"](tokens, z, sigma, cond, sigma_data=sigma_data)
