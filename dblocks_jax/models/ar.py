"""The autoregressive language models (method_spec 2.4): a Llama-style
transformer, as DiffusionBlocks' next-token denoiser and as the baseline.

DiffusionBlocks (parts, as the block-wise engine splits them):
  targets      the token table E [vocab, width]; its L2-normalised rows are
               the diffusion targets y and, divided by sigma_data, the
               clean context tokens (c_in(0) y: what a noisy token becomes
               at sigma = 0)
  noise_embed  c_noise(sigma) -> sinusoid -> MLP: a noisy token's condition
  context      a learned condition vector of the clean tokens, so that
               their keys and values never depend on a sigma (the KV cache)
  layers       one block's Llama layers, AdaLN-Zero per token
  readout      RMSNorm -> F; D = c_skip z + c_out F (EDM); adaLN(D) ->
               Linear to the vocabulary (zero initialised, untied from E)

Baseline (`LlamaLM`): a learned N(0, 0.02) token embedding, the same layers
without conditioning, a final RMSNorm and an untied linear head; plain
next-token cross-entropy under a causal mask.

Shapes: tokens [batch, length] int, z [batch, length, width], sigma
[batch, length], logits [batch, length, vocab].

Precision (`nn.precision`): the Linears compute in `ARConfig.dtype`, the
parameters are stored in `param_dtype`; the RMSNorms, the residual stream,
the softmax, the logits, F, D = c_skip z + c_out F and the targets are
float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.diffusion import edm
from dblocks_jax.nn import attention, embed, init, llama, precision
from dblocks_jax.nn.chunked_attention import MaskSpec


@dataclasses.dataclass(frozen=True)
class ARConfig(precision.ComputeSettings):
  """The Llama-style LM's hyper-parameters.

  Attributes:
    vocab_size: tokenizer vocabulary.
    max_seq_len: the longest context (prompt + generated tokens); RoPE has
      no table, this bounds what generation accepts.
    num_layers: depth.
    width: hidden size (and the diffusion space of DiffusionBlocks).
    num_heads: attention heads.
    mlp_dim: SwiGLU hidden size.
    cond_dim: width of the noise-level condition.
    frequency_dim: sinusoid size of the noise-level embedder.
    norm_eps: RMSNorm epsilon.
    rope_theta: RoPE base.
    attention_impl: the attention path of the Llama layers (`nn.llama`):
      "dense" (`jax.nn.dot_product_attention` with a dense mask), "chunked"
      (`nn.chunked_attention`, no scores written out) or "auto" (cuDNN's
      fused attention on GPU where the mask allows it, else chunked).
      Forward-mode autodiff (`jax.jvp`) needs "dense".
    lean_backward: the Llama layers keep the inputs of their norms,
      AdaLN modulation and gated last Linears for the backward pass, not
      what these compute, and recompute that there (`nn.llama`): less
      memory (the per-token modulation of the noisy tokens above all), the
      same values; one more modulation matmul, output projection and
      SwiGLU down projection per conditioned layer in backward. The
      baseline's RMSNorms take the same lean norm. Reverse mode only
      (forward mode needs False).

  The compute settings remat, dtype and param_dtype (keyword-only) are
  `nn.precision.ComputeSettings`'s.
  """

  vocab_size: int = 32000
  max_seq_len: int = 256
  num_layers: int = 12
  width: int = 768
  num_heads: int = 12
  mlp_dim: int = 2048
  cond_dim: int = 768
  frequency_dim: int = 256
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  attention_impl: str = "auto"
  lean_backward: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.attention_impl not in llama.ATTENTION_IMPLS:
      raise ValueError(
        f"attention_impl={self.attention_impl!r} is unknown; choose one of"
        f" {llama.ATTENTION_IMPLS}."
      )

  def describe_attention(self, mask_kinds) -> str:
    """The attention path of each of `mask_kinds` on this platform
    (`llama.describe_attention`), e.g. "chunked (auto on cpu)"."""
    return attention.describe_model_attention(self, mask_kinds)


def make_layers(spec: ARConfig, num_layers: int, rngs, *, conditioned=True):
  """`num_layers` Llama layers (AdaLN-Zero on the noise level when
  `conditioned`)."""
  return llama.LlamaStack(
    num_layers,
    width=spec.width,
    num_heads=spec.num_heads,
    mlp_dim=spec.mlp_dim,
    cond_dim=spec.cond_dim if conditioned else None,
    norm_eps=spec.norm_eps,
    rope_theta=spec.rope_theta,
    attention_impl=spec.attention_impl,
    lean_backward=spec.lean_backward,
    remat=spec.remat,
    **spec.dtypes(),
    rngs=rngs,
  )


class ContextCondition(nnx.Module):
  """The condition of the clean context tokens: one learned vector,
  N(0, 0.02) (stored in `param_dtype`), broadcast to [batch, tokens,
  cond_dim]."""

  def __init__(self, cond_dim: int, *, param_dtype=jnp.float32, rngs):
    self.vector = nnx.Param(
      init.NORMAL_002(rngs.params(), (cond_dim,), param_dtype)
    )

  def __call__(self, batch: int, tokens: int) -> jax.Array:
    vector = self.vector[...]
    return jnp.broadcast_to(vector, (batch, tokens) + vector.shape)


class DenoiserReadout(nnx.Module):
  """(h [b, t, width], z, sigma [b, t], cond [b, t, c]) -> (logits
  [b, t, vocab], D [b, t, width]), both float32."""

  def __init__(
    self,
    width: int,
    cond_dim: int,
    vocab_size: int,
    *,
    norm_eps,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = precision.rms_norm(
      width, epsilon=norm_eps, param_dtype=param_dtype, rngs=rngs
    )
    self.adaln = init.linear(cond_dim, 2 * width, zero=True, **kw)
    self.head = init.linear(width, vocab_size, zero=True, **kw)

  def __call__(self, h, z, sigma, cond, *, sigma_data: float):
    head_input, denoised = self.head_input(
      h, z, sigma, cond, sigma_data=sigma_data
    )
    return precision.float32(self.head(head_input)), denoised

  def head_input(self, h, z, sigma, cond, *, sigma_data: float):
    """-> (the head's input adaLN(D) [b, t, width], D [b, t, width]): the
    readout short of its last Linear, for a chunked loss
    (`nn.chunked_loss`)."""
    denoised = edm.denoised(z, self.norm(h), sigma, sigma_data)
    shift, scale = jnp.split(self.adaln(jax.nn.silu(cond)), 2, -1)
    return denoised * (1 + scale) + shift, denoised


def make_shell(spec: ARConfig, rngs) -> dict[str, nnx.Module]:
  """The DiffusionBlocks parts outside the layers, minus the token table."""
  kw = spec.dtypes()
  return {
    "noise_embed": embed.NoiseLevelEmbedder(
      spec.cond_dim, frequency_dim=spec.frequency_dim, **kw, rngs=rngs
    ),
    "context": ContextCondition(
      spec.cond_dim, param_dtype=kw["param_dtype"], rngs=rngs
    ),
    "readout": DenoiserReadout(
      spec.width,
      spec.cond_dim,
      spec.vocab_size,
      norm_eps=spec.norm_eps,
      **kw,
      rngs=rngs,
    ),
  }


def make_targets(spec: ARConfig, *, trainable: bool, rngs):
  return embed.TargetTable(
    spec.vocab_size,
    spec.width,
    trainable=trainable,
    param_dtype=spec.dtypes()["param_dtype"],
    rngs=rngs,
  )


class LlamaLM(nnx.Module):
  """The autoregressive baseline: tokens [b, t] -> logits [b, t, vocab],
  row i predicting token i + 1."""

  def __init__(self, spec: ARConfig, *, rngs: nnx.Rngs):
    self.spec = spec
    self.embed = token_embedding(spec, rngs)
    self.layers = make_layers(spec, spec.num_layers, rngs, conditioned=False)
    self.norm = final_norm(spec, rngs)
    self.head = llama.linear(
      spec.width, spec.vocab_size, **spec.dtypes(), rngs=rngs
    )

  def features(self, tokens: jax.Array) -> jax.Array:
    """tokens [b, t] -> the head's input [b, t, width] (final RMSNorm)."""
    length = tokens.shape[1]
    h = self.layers(
      self.embed[...][tokens],
      positions=jnp.arange(length),
      mask=MaskSpec.causal(),
    )
    return self.norm(h)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return precision.float32(self.head(self.features(tokens)))

  def prefill(self, tokens: jax.Array):
    """tokens [b, t] -> (logits [b, t, vocab], [(keys, values)] per layer)."""
    length = tokens.shape[1]
    h, kvs = self.layers.prefill(
      self.embed[...][tokens],
      positions=jnp.arange(length),
      mask=MaskSpec.causal(),
    )
    return precision.float32(self.head(self.norm(h))), kvs

  def decode(self, token: jax.Array, position, prefixes):
    """token [b, 1] at `position` against the cache -> (logits [b, 1,
    vocab], [(keys, values)] of the token per layer)."""
    h, kvs = self.layers.decode(
      self.embed[...][token],
      None,
      positions=jnp.reshape(position, (1,)),
      prefixes=prefixes,
    )
    return precision.float32(self.head(self.norm(h))), kvs


def token_embedding(spec: ARConfig, rngs) -> nnx.Param:
  """The baselines' token table [vocab_size, width], N(0, 0.02), stored in
  `param_dtype`."""
  shape = (spec.vocab_size, spec.width)
  return nnx.Param(
    init.NORMAL_002(rngs.params(), shape, spec.dtypes()["param_dtype"])
  )


def final_norm(spec: ARConfig, rngs) -> nnx.RMSNorm:
  """An RMSNorm over the width (float32): the baselines' final norm (and
  the recurrent-depth state's)."""
  return precision.rms_norm(
    spec.width,
    epsilon=spec.norm_eps,
    param_dtype=spec.dtypes()["param_dtype"],
    rngs=rngs,
  )


def causal_mask(length: int) -> jax.Array:
  """[1, 1, length, length]: token i attends to tokens j <= i (the dense
  form of `MaskSpec.causal()`, which the models pass)."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def param_count(spec: ARConfig, *, blockwise: bool) -> int:
  """Trainable parameters from the module structure (shared sharing mode
  for DiffusionBlocks: one token table, embedder, context and readout).

  A layer holds qkv and output projections (4 d^2), SwiGLU (3 d m) and two
  RMSNorm scales (2 d); conditioned, also its adaLN (c x 6d + 6d).
  """
  d, m, c, v = spec.width, spec.mlp_dim, spec.cond_dim, spec.vocab_size
  layer = 4 * d * d + 3 * d * m + 2 * d
  if not blockwise:
    return spec.num_layers * layer + v * d + d + d * v
  layer += c * 6 * d + 6 * d
  embedder = spec.frequency_dim * c + c + c * c + c
  readout = d + c * 2 * d + 2 * d + d * v + v
  return spec.num_layers * layer + v * d + embedder + c + readout
