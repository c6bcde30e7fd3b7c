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

Precision (`nn.precision`): the Linears compute in `DiTConfig.dtype`, the
parameters are stored in `param_dtype`; the LayerNorms, the position
embedding, the residual stream, the softmax and the readout's output F (so
the EDM preconditioning and the loss) are float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import adaln, attention, embed, init, layers, precision

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
  """[batch, H, W, C] -> [batch, (H/p)(W/p), width] + fixed sin-cos posemb,
  float32 (the residual stream)."""

  def __init__(
    self,
    image_shape,
    patch_size: int,
    width: int,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    h, w, c = image_shape
    if h != w or h % patch_size:
      raise ValueError(
        f"DiT needs square inputs divisible by the patch size; got {h}x{w}"
        f" with patch {patch_size}"
      )
    self.grid_size = h // patch_size
    self.width = width
    self.patch_embed = embed.PatchEmbed(
      patch_size,
      c,
      width,
      kernel_init=init.XAVIER_UNIFORM,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  def __call__(self, images: jax.Array) -> jax.Array:
    position = embed.sincos_position_embedding_2d(self.grid_size, self.width)
    return precision.residual(self.patch_embed(images)) + position[None]


class FinalLayer(nnx.Module):
  """DiT's final layer: LayerNorm (no affine), adaLN shift/scale, a zero
  Linear. (h [batch, tokens, width], cond [batch, width]) -> [batch, tokens,
  out_features], float32."""

  def __init__(
    self,
    width: int,
    out_features: int,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = precision.layer_norm(
      width,
      epsilon=LAYER_NORM_EPS,
      affine=False,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.adaln = adaln.AdaLNModulation(width, width, 2, mode="dit", **kw)
    self.linear = init.linear(width, out_features, zero=True, **kw)

  def __call__(self, h: jax.Array, cond: jax.Array) -> jax.Array:
    shift, scale = self.adaln(cond)
    out = self.linear(adaln.modulate(self.norm(h), shift, scale))
    return precision.float32(out)


class DiTReadout(FinalLayer):
  """DiT's final layer and unpatchify: tokens, cond -> [batch, H, W,
  out_channels], float32 (F, which the EDM preconditioning reads)."""

  def __init__(
    self,
    image_shape,
    patch_size: int,
    width: int,
    out_channels: int,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    self.image_shape = tuple(image_shape)
    self.patch_size = patch_size
    out_features = patch_size * patch_size * out_channels
    super().__init__(
      width, out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  def __call__(self, tokens: jax.Array, cond: jax.Array) -> jax.Array:
    h, w, _ = self.image_shape
    out = super().__call__(tokens, cond)
    return embed.unpatchify(out, self.patch_size, h, w)


@dataclasses.dataclass(frozen=True)
class DiTConfig(precision.ComputeSettings):
  """DiT's hyper-parameters (the reference definition's).

  Attributes:
    num_layers: depth.
    width: hidden size.
    num_heads: attention heads.
    patch_size: 2, 4 or 8 for the reference variants (any divisor of the
      input size works).
    mlp_ratio: MLP hidden size / width.
    frequency_dim: sinusoid size of the timestep embedder.
    learn_sigma: keep the reference's 2 C output channels (EDM uses C).
    null_class: the label table has the extra null-class row (guidance).
    attention: the dense path's form, "einsum" (written out) or
      "dot_product" (`jax.nn.dot_product_attention`); the same function.
    attention_impl: the attention path (`nn.attention`): "dense" (the
      `attention` form), "chunked" (`nn.chunked_attention`: no scores
      written out) or "auto" (cuDNN's fused attention on GPU where it can
      run, else chunked). Forward-mode autodiff (`jax.jvp`) needs "dense".

  The compute settings remat, dtype and param_dtype (keyword-only) are
  `nn.precision.ComputeSettings`'s.
  """

  num_layers: int = 12
  width: int = 384
  num_heads: int = 6
  patch_size: int = 2
  mlp_ratio: int = 4
  frequency_dim: int = 256
  learn_sigma: bool = True
  null_class: bool = True
  attention: str = "einsum"
  attention_impl: str = "dense"

  def __post_init__(self):
    super().__post_init__()
    attention.check_attention_impl(self.attention_impl)

  def describe_attention(self) -> str:
    """The layers' attention path on this platform, e.g. "chunked (auto on
    cpu)" (`nn.attention.describe_attention`)."""
    return attention.describe_model_attention(self, ("bidirectional",))

  @classmethod
  def variant(cls, name: str, **kwargs) -> "DiTConfig":
    """The reference variant `name` ("L/2", "DiT-XL/2", ...)."""
    num_layers, width, heads, patch = parse_variant(name)
    return cls(
      num_layers=num_layers,
      width=width,
      num_heads=heads,
      patch_size=patch,
      **kwargs,
    )


def make_layers(
  spec: DiTConfig, num_layers: int, rngs, *, rope_theta: float | None = None
) -> layers.LayerStack:
  """`num_layers` DiT layers (adaLN-Zero, conditioned on width-d cond);
  `rope_theta` (None: off, DiT's own) rotates the attention's q and k by
  their token index (RoPE; the token DiT's rotary positions)."""
  return layers.LayerStack(
    num_layers,
    width=spec.width,
    num_heads=spec.num_heads,
    mlp_dim=spec.mlp_ratio * spec.width,
    cond_dim=spec.width,
    dropout=0.0,
    attention_dropout=0.0,
    layer_norm_eps=LAYER_NORM_EPS,
    modulation="dit",
    norm_affine=False,
    gelu_approximate=True,
    kernel_init=init.XAVIER_UNIFORM,
    attention_kind=spec.attention,
    attention_impl=spec.attention_impl,
    rope_theta=rope_theta,
    remat=spec.remat,
    **spec.dtypes(),
    rngs=rngs,
  )


def make_shell(
  spec: DiTConfig, image_shape, num_classes: int, rngs
) -> dict[str, nnx.Module]:
  """The parts outside the layers: stem, embedders, readout (the parts of
  `tasks.generation.standard_denoise`)."""
  channels = image_shape[-1]
  kw = spec.dtypes()
  return {
    "stem": DiTStem(image_shape, spec.patch_size, spec.width, **kw, rngs=rngs),
    "noise_embed": embed.NoiseLevelEmbedder(
      spec.width, frequency_dim=spec.frequency_dim, **kw, rngs=rngs
    ),
    "label_embed": embed.LabelEmbedder(
      num_classes,
      spec.width,
      null_class=spec.null_class,
      param_dtype=kw["param_dtype"],
      rngs=rngs,
    ),
    "readout": DiTReadout(
      image_shape,
      spec.patch_size,
      spec.width,
      channels * (2 if spec.learn_sigma else 1),
      **kw,
      rngs=rngs,
    ),
  }


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
