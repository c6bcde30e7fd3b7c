"""ViT classification: the DiffusionBlocks ViT and its end-to-end baseline.

DiffusionBlocks ViT (the official model, method_spec 2.1): the noisy,
L2-normalised label embedding, scaled by c_in(sigma), takes the place of the
CLS token; every layer is AdaLN-Zero conditioned on c_noise(sigma); the final
LayerNorm output at token 0 is the network output F, the denoised embedding is
D = c_skip z + c_out F, and a final adaLN + linear classifier maps D to logits.

`model.readout_token` switches between the official code ("label": F is read
at the noisy-label token) and the paper's description ("cls": a separate
learned CLS token comes first and F is read there). The label token carries
c_in z, whose norm is about sqrt(width) at every sigma, so the official
readout must first outgrow that noise; the CLS readout starts clean.

Parts (how the block-wise engine splits the model):
  stem         patch embedding, position embedding, embedding dropout
  noise_embed  sinusoid(c_noise) -> MLP
  targets      the label-embedding table (diffusion target space)
  layers       one block's transformer layers
  readout      final LayerNorm, final adaLN, classifier

Baseline (HF ViTForImageClassification): CLS token, the same stem and layers
without conditioning, final LayerNorm, linear head on the CLS token.

Precision (`nn.precision`): the Linears compute in `ViTConfig.dtype`, the
parameters are stored in `param_dtype`; the LayerNorms, the residual
stream, the softmax, the logits, F and D = c_skip z + c_out F are float32.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.diffusion import edm
from dblocks_jax.nn import adaln, attention, embed, init, layers, precision


class ViTStem(nnx.Module):
  """Images and leading tokens -> [batch, cls? + leading + P, width].

  With `cls_token`, a learned CLS token comes first (the baseline, and the
  paper's description of the DiffusionBlocks ViT); the leading token (the
  noisy label) follows. Position embeddings cover every token.
  """

  def __init__(
    self,
    image_shape,
    patch_size: int,
    width: int,
    *,
    cls_token: bool,
    num_leading: int,
    dropout,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    h, w, c = image_shape
    num_patches = (h // patch_size) * (w // patch_size)
    self.patch_embed = embed.PatchEmbed(
      patch_size, c, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.cls = (
      nnx.Param(
        init.TRUNC_NORMAL_002(rngs.params(), (1, 1, width), param_dtype)
      )
      if cls_token
      else None
    )
    num_tokens = num_patches + num_leading + int(cls_token)
    self.position = nnx.Param(
      init.TRUNC_NORMAL_002(rngs.params(), (1, num_tokens, width), param_dtype)
    )
    self.dropout = nnx.Dropout(dropout)

  def __call__(
    self, images: jax.Array, leading: jax.Array | None = None, *, rngs=None
  ):
    """images: [batch, H, W, C]; leading: [batch, n, width] or None.

    Returns [batch, tokens, width], float32 (the residual stream)."""
    tokens = precision.residual(self.patch_embed(images))
    if leading is not None:
      tokens = jnp.concatenate([leading, tokens], axis=1)
    if self.cls is not None:
      cls = jnp.broadcast_to(
        self.cls[...], (tokens.shape[0], 1, tokens.shape[-1])
      )
      tokens = jnp.concatenate([cls, tokens], axis=1)
    tokens = tokens + self.position[...]
    return self.dropout(tokens, rngs=rngs, deterministic=rngs is None)


class DiffusionReadout(nnx.Module):
  """Token 0 -> D (EDM) -> adaLN -> logits.

  Token 0 is the noisy-label token (official code) or a CLS token (paper).
  """

  def __init__(
    self,
    width,
    cond_dim,
    num_classes,
    *,
    layer_norm_eps,
    modulation,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = precision.layer_norm(
      width, epsilon=layer_norm_eps, param_dtype=param_dtype, rngs=rngs
    )
    self.adaln = adaln.AdaLNModulation(
      cond_dim, width, 2, mode=modulation, **kw
    )
    self.head = init.linear(width, num_classes, zero=True, **kw)

  def __call__(self, tokens, z, sigma, cond, *, sigma_data: float):
    """tokens: [batch, T, width], z: [batch, width], sigma: [batch].

    Returns:
      logits: [batch, num_classes], denoised: [batch, width], float32.
    """
    out = self.norm(tokens)[:, 0]  # F, float32.
    denoised = edm.denoised(z, out, sigma, sigma_data)
    shift, scale = self.adaln(cond)
    logits = self.head(adaln.modulate(denoised, shift, scale))
    return precision.float32(logits), denoised


@dataclasses.dataclass(frozen=True)
class ViTConfig(precision.ComputeSettings):
  """The ViT's hyper-parameters (the official model's defaults: HF ViTConfig
  with the DiffusionBlocks conditioning).

  Attributes:
    num_layers: depth L.
    width: hidden size.
    num_heads: attention heads.
    mlp_dim: MLP hidden size (official: 3072 at any width).
    patch_size: square patch side.
    cond_dim: width of the noise-level conditioning (official: width // 6).
    frequency_dim: sinusoid size of the noise-level embedder.
    dropout: dropout after attention, MLP and embeddings.
    attention_dropout: dropout on attention probabilities.
    layer_norm_eps: LayerNorm epsilon (HF ViT: 1e-12).
    modulation: "official" (SiLU after the adaLN Linear) or "dit".
    readout_token: "label" (the official code: F read at the noisy-label
      token) or "cls" (the paper: a separate CLS token).
    attention_impl: the attention path (`nn.attention`): "dense" (the
      scores written out), "chunked" (`nn.chunked_attention`, none written
      out; no attention dropout) or "auto" (cuDNN's fused attention on GPU
      where it can run, else chunked; dense with attention dropout).

  The compute settings remat, dtype and param_dtype (keyword-only) are
  `nn.precision.ComputeSettings`'s.
  """

  num_layers: int = 12
  width: int = 128
  num_heads: int = 4
  mlp_dim: int = 3072
  patch_size: int = 4
  cond_dim: int = 21
  frequency_dim: int = 256
  dropout: float = 0.1
  attention_dropout: float = 0.1
  layer_norm_eps: float = 1e-12
  modulation: str = "official"
  readout_token: str = "label"
  attention_impl: str = "dense"

  def __post_init__(self):
    super().__post_init__()
    attention.check_attention_impl(self.attention_impl, self.attention_dropout)
    if self.readout_token not in READOUT_TOKENS:
      raise ValueError(
        f"readout_token={self.readout_token!r} is unknown; choose one of"
        f" {READOUT_TOKENS} ('label' = official code, 'cls' = paper)."
      )
    if self.modulation not in adaln.MODULATIONS:
      raise ValueError(
        f"modulation={self.modulation!r} is unknown; choose one of"
        f" {adaln.MODULATIONS}."
      )

  def describe_attention(self) -> str:
    """The layers' attention path on this platform, e.g. "dense (auto on
    cpu, attention dropout)" (`nn.attention.describe_attention`)."""
    return attention.describe_model_attention(self, ("bidirectional",))


READOUT_TOKENS = ("label", "cls")


class BaselineViT(nnx.Module):
  """The end-to-end ViT: CLS token, plain layers, CE on the CLS logits."""

  def __init__(
    self, spec: ViTConfig, image_shape, num_classes: int, *, rngs: nnx.Rngs
  ):
    self.stem = make_stem(
      spec, image_shape, rngs, cls_token=True, num_leading=0
    )
    self.layers = make_layers(spec, spec.num_layers, rngs, conditioned=False)
    kw = spec.dtypes()
    self.norm = precision.layer_norm(
      spec.width,
      epsilon=spec.layer_norm_eps,
      param_dtype=kw["param_dtype"],
      rngs=rngs,
    )
    self.head = init.linear(spec.width, num_classes, **kw, rngs=rngs)

  def features(self, images: jax.Array, *, rngs=None) -> jax.Array:
    """images: [batch, H, W, C] -> [batch, width], the head's input."""
    h = self.layers(self.stem(images, rngs=rngs), rngs=rngs)
    return self.norm(h)[:, 0]

  def __call__(self, images: jax.Array, *, rngs=None) -> jax.Array:
    """images: [batch, H, W, C] -> logits [batch, num_classes], float32."""
    return precision.float32(self.head(self.features(images, rngs=rngs)))


def make_stem(
  spec: ViTConfig, image_shape, rngs, *, cls_token, num_leading
) -> ViTStem:
  return ViTStem(
    image_shape,
    spec.patch_size,
    spec.width,
    cls_token=cls_token,
    num_leading=num_leading,
    dropout=spec.dropout,
    **spec.dtypes(),
    rngs=rngs,
  )


def make_layers(spec: ViTConfig, num_layers: int, rngs, *, conditioned=True):
  """`num_layers` transformer layers (AdaLN-Zero when `conditioned`)."""
  return layers.LayerStack(
    num_layers,
    width=spec.width,
    num_heads=spec.num_heads,
    mlp_dim=spec.mlp_dim,
    cond_dim=spec.cond_dim if conditioned else None,
    dropout=spec.dropout,
    attention_dropout=spec.attention_dropout,
    layer_norm_eps=spec.layer_norm_eps,
    modulation=spec.modulation,
    attention_impl=spec.attention_impl,
    remat=spec.remat,
    **spec.dtypes(),
    rngs=rngs,
  )


def make_shell(
  spec: ViTConfig, image_shape, num_classes: int, rngs
) -> dict[str, nnx.Module]:
  """The parts outside the layers, minus the target table."""
  return {
    "stem": make_stem(
      spec,
      image_shape,
      rngs,
      cls_token=spec.readout_token == "cls",
      num_leading=1,
    ),
    "noise_embed": embed.NoiseLevelEmbedder(
      spec.cond_dim,
      frequency_dim=spec.frequency_dim,
      **spec.dtypes(),
      rngs=rngs,
    ),
    "readout": DiffusionReadout(
      spec.width,
      spec.cond_dim,
      num_classes,
      layer_norm_eps=spec.layer_norm_eps,
      modulation=spec.modulation,
      **spec.dtypes(),
      rngs=rngs,
    ),
  }


def make_targets(
  spec: ViTConfig, num_classes: int, *, trainable: bool, rngs
) -> embed.TargetTable:
  return embed.TargetTable(
    num_classes,
    spec.width,
    trainable=trainable,
    param_dtype=spec.dtypes()["param_dtype"],
    rngs=rngs,
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
  noisy_label = edm.c_in(sigma, sigma_data)[:, None, None] * z[:, None]
  tokens = parts["stem"](images, noisy_label, rngs=rngs)
  tokens = parts["layers"](tokens, cond, rngs=rngs)
  return parts["readout"](tokens, z, sigma, cond, sigma_data=sigma_data)
