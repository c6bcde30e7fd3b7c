"""DiT (Peebles & Xie 2023) as an EDM denoiser, split into block-wise parts.

The network follows the reference DiT definition: patch embedding (a
patch-size-strided convolution, written as a Linear on patches), a FIXED 2-D
sin-cos position embedding (a constant, never a parameter), a timestep
embedder (sinusoid(256) -> Linear -> SiLU -> Linear) and a label embedder
whose extra row is the null class of classifier-free guidance, adaLN-Zero
layers (LayerNorm without affine, eps 1e-6, fused-qkv attention, tanh-GELU
MLP of ratio 4, SiLU -> Linear(width, 6 width) modulation), and the final
layer (LayerNorm, adaLN shift/scale, Linear to p*p*channels). Linear weights
are Xavier-uniform, embedders N(0, 0.02), every adaLN Linear and the final
Linear zero: a fresh DiT outputs exactly zero.

Under EDM (method_spec 1.1) the network is F in
D = c_skip(sigma) z + c_out(sigma) F(c_in(sigma) z; c_noise(sigma), label),
with c_noise = ln(sigma) / 4 fed to the timestep embedder in place of DiT's
integer timestep.

`learn_sigma` (the reference default, True) doubles the output channels for
the learned variance of DiT's DDPM hybrid loss. EDM has no such variance: the
second half of the output is discarded, so it receives no gradient and stays
at its zero initialisation. It is kept by default so that parameter counts
(and reference checkpoints) match DiT exactly; `model.learn_sigma=False`
drops it (saving width * p*p*C + p*p*C parameters).

Parts (how the block-wise engine splits the model):
  stem         patch embedding (+ the fixed position embedding)
  noise_embed  c_noise -> timestep embedder
  label_embed  label -> label embedder (null class for guidance)
  layers       one block's DiT layers
  readout      the final layer and unpatchify
In the `shared` sharing mode the block-wise model has exactly the reference
DiT's parameters; `independent` adds (B - 1) copies of the parts outside the
layers.
"""

from collections.abc import Mapping

import jax
import ml_collections
from flax import nnx

from dblocks_jax.diffusion import edm
from dblocks_jax.nn import adaln, embed, init, layers

# name -> (layers, width, heads), the reference registry (patch sizes 2, 4, 8).
VARIANTS = {
  "S": (12, 384, 6),
  "B": (12, 768, 12),
  "L": (24, 1024, 16),
  "XL": (28, 1152, 16),
}
PATCH_SIZES = (2, 4, 8)
LAYER_NORM_EPS = 1e-6


def parse_variant(name: str) -> tuple[int, int, int, int]:
  """'L/2' or 'DiT-L/2' -> (layers, width, heads, patch size)."""
  size, _, patch = name.removeprefix("DiT-").partition("/")
  if (
    size not in VARIANTS
    or not patch.isdigit()
    or int(patch) not in (PATCH_SIZES)
  ):
    raise ValueError(
      f"DiT variant {name!r} is unknown; use one of"
      f" {[f'{v}/{p}' for v in VARIANTS for p in PATCH_SIZES]}"
    )
  return (*VARIANTS[size], int(patch))


class DiTStem(nnx.Module):
  """[batch, H, W, C] -> [batch, (H/p)(W/p), width] + fixed sin-cos posemb."""

  def __init__(self, image_shape, patch_size: int, width: int, *, rngs):
    h, w, c = image_shape
    if h != w or h % patch_size:
      raise ValueError(
        f"DiT needs square inputs divisible by the patch size; got {h}x{w}"
        f" with patch {patch_size}"
      )
    self.grid_size = h // patch_size
    self.width = width
    self.patch_embed = embed.PatchEmbed(
      patch_size, c, width, kernel_init=init.XAVIER_UNIFORM, rngs=rngs
    )

  def __call__(self, images: jax.Array) -> jax.Array:
    position = embed.sincos_position_embedding_2d(self.grid_size, self.width)
    return self.patch_embed(images) + position[None]


class DiTReadout(nnx.Module):
  """DiT's final layer: tokens, cond -> [batch, H, W, out_channels]."""

  def __init__(
    self, image_shape, patch_size: int, width: int, out_channels: int, *, rngs
  ):
    self.image_shape = tuple(image_shape)
    self.patch_size = patch_size
    self.norm = nnx.LayerNorm(
      width,
      epsilon=LAYER_NORM_EPS,
      use_bias=False,
      use_scale=False,
      rngs=rngs,
    )
    self.adaln = adaln.AdaLNModulation(width, width, 2, mode="dit", rngs=rngs)
    self.linear = init.linear(
      width, patch_size * patch_size * out_channels, zero=True, rngs=rngs
    )

  def __call__(self, tokens: jax.Array, cond: jax.Array) -> jax.Array:
    shift, scale = self.adaln(cond)
    out = self.linear(adaln.modulate(self.norm(tokens), shift, scale))
    h, w, _ = self.image_shape
    return embed.unpatchify(out, self.patch_size, h, w)


def make_layers(config, num_layers: int, rngs) -> layers.LayerStack:
  """`num_layers` DiT layers (adaLN-Zero, conditioned on width-d cond)."""
  m = config.model
  return layers.LayerStack(
    num_layers,
    width=m.width,
    num_heads=m.num_heads,
    mlp_dim=m.mlp_ratio * m.width,
    cond_dim=m.width,
    dropout=0.0,
    attention_dropout=0.0,
    layer_norm_eps=LAYER_NORM_EPS,
    modulation="dit",
    norm_affine=False,
    gelu_approximate=True,
    kernel_init=init.XAVIER_UNIFORM,
    remat=m.remat,
    rngs=rngs,
  )


def make_shell(
  config: ml_collections.ConfigDict, image_shape, num_classes: int, rngs
) -> dict[str, nnx.Module]:
  """The parts outside the layers: stem, embedders, readout."""
  m = config.model
  channels = image_shape[-1]
  return {
    "stem": DiTStem(image_shape, m.patch_size, m.width, rngs=rngs),
    "noise_embed": embed.NoiseLevelEmbedder(
      m.width, frequency_dim=m.frequency_dim, rngs=rngs
    ),
    "label_embed": embed.LabelEmbedder(
      num_classes,
      m.width,
      null_class=config.model.label_dropout > 0,
      rngs=rngs,
    ),
    "readout": DiTReadout(
      image_shape,
      m.patch_size,
      m.width,
      channels * (2 if m.learn_sigma else 1),
      rngs=rngs,
    ),
  }


def denoise(
  parts: Mapping[str, nnx.Module],
  z: jax.Array,
  sigma: jax.Array,
  labels: jax.Array,
  *,
  sigma_data: float,
) -> jax.Array:
  """One block's EDM denoiser.

  Args:
    parts: stem, noise_embed, label_embed, layers, readout.
    z: [batch, H, W, C] noisy images (or latents) z = y + sigma eps.
    sigma: [batch] noise levels.
    labels: [batch] int classes; `num_classes` is the null class.
    sigma_data: EDM sigma_data.

  Returns:
    D: [batch, H, W, C], the denoised estimate.
  """
  cond = parts["noise_embed"](edm.c_noise(sigma)) + parts["label_embed"](labels)
  scaled = edm.c_in(sigma, sigma_data)[:, None, None, None] * z
  tokens = parts["layers"](parts["stem"](scaled), cond)
  out = parts["readout"](tokens, cond)[..., : z.shape[-1]]
  return edm.denoised(z, out, sigma, sigma_data)


def count_params(parts: Mapping[str, nnx.Module]) -> int:
  """Trainable parameters of a dict of parts (the position table is none)."""
  return sum(
    x.size
    for p in parts.values()
    for x in jax.tree.leaves(nnx.state(p, nnx.Param))
  )


def reference_param_count(
  variant: str,
  *,
  input_size: int = 32,
  in_channels: int = 4,
  num_classes: int = 1000,
  learn_sigma: bool = True,
  null_class: bool = True,
) -> int:
  """Trainable parameters of the reference DiT, from its module structure.

  Per layer 18 d^2 + 15 d (qkv, proj, fc1, fc2, adaLN 6d); patch embedding
  p^2 C d + d; timestep MLP 256 d + d + d^2 + d; label table (classes + null)
  d; final adaLN 2 d^2 + 2 d and Linear d p^2 C_out + p^2 C_out.
  """
  del input_size  # The fixed position table holds no parameters.
  depth, d, _, p = parse_variant(variant)
  out = in_channels * (2 if learn_sigma else 1)
  return (
    depth * (18 * d * d + 15 * d)
    + p * p * in_channels * d
    + d
    + 256 * d
    + d
    + d * d
    + d
    + (num_classes + int(null_class)) * d
    + 2 * d * d
    + 2 * d
    + d * p * p * out
    + p * p * out
  )
