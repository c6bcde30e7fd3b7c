"""The residual transformer layer, with or without AdaLN-Zero conditioning."""

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import adaln, attention, init, precision
from dblocks_jax.nn import remat as remat_lib


class TransformerLayer(nnx.Module):
  """Pre-LN transformer layer; with `cond_dim`, a DiT-style AdaLN-Zero layer.

  Conditioned (the DiffusionBlocks ViT layer):
    shift1, scale1, gate1, shift2, scale2, gate2 = adaLN(cond)
    x = x + gate1 * Attn(modulate(LN(x), shift1, scale1))
    x = x + gate2 * MLP(modulate(LN(x), shift2, scale2))
  Unconditioned (the plain ViT baseline): the same without modulation.
  Layer norms are affine, as in the official (HF ViT) layer; DiT's are not
  (`norm_affine=False`), and DiT uses tanh-GELU and Xavier-uniform weights.
  `attention_impl` ("dense", "chunked" or "auto") and `attention_kind`
  (the dense path's form) pick the attention's path (`nn.attention`);
  `rope_theta` (None: off) rotates q and k by their positions (RoPE).
  The Linears compute in `dtype`; the layer norms are float32 (statistics
  and output), so the residual x stays float32 (`nn.precision`).

  x: [batch, tokens, width], cond: [batch, cond_dim], mask: None, a
  `MaskSpec` or a dense bool array (`SelfAttention`) -> [batch, tokens,
  width].
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    mlp_dim: int,
    *,
    cond_dim: int | None,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    layer_norm_eps: float = 1e-12,
    modulation: str = "official",
    norm_affine: bool = True,
    gelu_approximate: bool = False,
    kernel_init=init.TRUNC_NORMAL_002,
    attention_kind: str = "einsum",
    attention_impl: str = "dense",
    rope_theta: float | None = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    norm = dict(
      epsilon=layer_norm_eps,
      affine=norm_affine,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # What the attention and the MLP share.
    sublayer = dict(dropout=dropout, kernel_init=kernel_init, **kw)
    self.norm1 = precision.layer_norm(width, **norm)
    self.attention = attention.SelfAttention(
      width,
      num_heads,
      attention_dropout=attention_dropout,
      kind=attention_kind,
      attention_impl=attention_impl,
      rope_theta=rope_theta,
      **sublayer,
    )
    self.norm2 = precision.layer_norm(width, **norm)
    self.mlp = attention.Mlp(
      width, mlp_dim, gelu_approximate=gelu_approximate, **sublayer
    )
    self.adaln = (
      adaln.AdaLNModulation(cond_dim, width, 6, mode=modulation, **kw)
      if cond_dim is not None
      else None
    )

  def __call__(
    self,
    x: jax.Array,
    cond: jax.Array | None = None,
    *,
    mask: jax.Array | None = None,
    rngs=None,
  ) -> jax.Array:
    if self.adaln is None:
      x = x + self.attention(self.norm1(x), mask=mask, rngs=rngs)
      return x + self.mlp(self.norm2(x), rngs=rngs)
    shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(cond)
    h = adaln.modulate(self.norm1(x), shift1, scale1)
    x = x + gate1[:, None] * self.attention(h, mask=mask, rngs=rngs)
    h = adaln.modulate(self.norm2(x), shift2, scale2)
    return x + gate2[:, None] * self.mlp(h, rngs=rngs)


class Stack(nnx.Module):
  """Layers applied in order: `h = layer(h, *args, **kwargs)` for each.

  The container of a block built from your own layer (`BlockwiseModel.build(
  layer=...)`); `remat` puts each layer under `nnx.remat` (jax.checkpoint)
  with the policy it names ("none", "full" or a `jax.checkpoint_policies`
  name; `nn.remat`).

  h: [batch, ...] -> the same shape.
  """

  def __init__(self, layers, *, remat: str | bool = "none"):
    self.layers = nnx.List(list(layers))
    self.remat = remat_lib.remat_name(remat)

  def __len__(self) -> int:
    return len(self.layers)

  def __call__(self, h, *args, **kwargs):
    call = remat_lib.checkpointed(
      lambda layer, h: layer(h, *args, **kwargs), self.remat
    )
    for layer in self.layers:
      h = call(layer, h)
    return h


class LayerStack(Stack):
  """A contiguous group of layers: one DiffusionBlocks block.

  x: [batch, tokens, width] -> [batch, tokens, width], float32 (at least):
  the residual stream (`nn.precision.residual`).
  `remat` names what each layer keeps for backward (`nn.remat`: "none",
  "full" or a `jax.checkpoint_policies` name; True/False = "full"/"none").
  """

  def __init__(
    self, num_layers: int, *, remat: str | bool = "none", rngs, **layer_kw
  ):
    stack = [TransformerLayer(rngs=rngs, **layer_kw) for _ in range(num_layers)]
    super().__init__(stack, remat=remat)

  def __call__(self, x, cond=None, *, mask=None, rngs=None):
    x = precision.residual(x)
    # The same dropout stream with any policy: `nnx.remat` carries the Rngs.
    call = remat_lib.checkpointed(_call_layer, self.remat)
    for layer in self.layers:
      x = call(layer, x, cond, mask, rngs)
    return x


def _call_layer(layer, x, cond, mask, rngs):
  return layer(x, cond, mask=mask, rngs=rngs)
