"""The masked-diffusion language model: a DiT over tokens (MDLM/SEDD style).

A bidirectional transformer that reads a partly masked sequence x_t and the
time t and returns logits over the clean vocabulary at every position:

  stem         token embedding (vocab + the [MASK] row) + a learned position
               table of `max_seq_len` rows, both N(0, 0.02); with rotary
               positions the token embedding only
  noise_embed  t -> DiT's timestep embedder (sinusoid -> MLP), fed
               `time_scale` x t so that t in [0, 1] spans the sinusoid's
               frequencies as DiT's integer timesteps do
  layers       one block's DiT layers (adaLN-Zero on the time embedding,
               no attention mask; `attention_impl` picks the path:
               `jax.nn.dot_product_attention`, chunked or cuDNN's; with
               rotary positions q and k are rotated by their index,
               RoPE as in SEDD and MDLM)
  readout      LayerNorm, adaLN shift/scale, Linear to the vocabulary (zero
               initialised: a fresh model predicts the uniform distribution)

The [MASK] id is `vocab_size`; the readout has no logit for it, so the model
never predicts a mask. In the `shared` sharing mode all blocks read one stem
and readout.

Positions (`MDMConfig.positions`, one of POSITIONS): "learned" (the
default) adds the stem's position table; "rotary" has no position
parameter and applies RoPE (`nn.rope.rotary`, base ROPE_THETA) to q and k
in every layer's self-attention, on every attention path, so that the
scores see positions through i - j only.

Shapes: tokens [batch, length] int, t [batch], logits [batch, length, vocab].

Precision (`nn.precision`): the Linears compute in `MDMConfig.dtype`, the
parameters are stored in `param_dtype`; the LayerNorms, the residual
stream, the softmax and the logits (so the loss) are float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.models import dit
from dblocks_jax.nn import embed, init, precision, rope

# `MDMConfig.positions`: a learned absolute table, or RoPE in the attention.
POSITIONS = ("learned", "rotary")
# RoPE's base for positions="rotary" (SEDD's and MDLM's).
ROPE_THETA = rope.DEFAULT_THETA


@dataclasses.dataclass(frozen=True)
class MDMConfig(precision.ComputeSettings):
  """The token DiT's hyper-parameters.

  Attributes:
    vocab_size: clean symbols (27 for text8's alphabet); [MASK] is one more.
    max_seq_len: rows of the position table (the longest sequence);
      unused with rotary positions.
    num_layers: depth.
    width: hidden size.
    num_heads: attention heads.
    mlp_ratio: MLP hidden size / width.
    frequency_dim: sinusoid size of the timestep embedder.
    attention_impl: the attention path (`nn.attention`): "dense"
      (`jax.nn.dot_product_attention`, the scores written out), "chunked"
      (`nn.chunked_attention`: none written out) or "auto" (cuDNN's fused
      attention on GPU where it can run, else chunked). Forward-mode
      autodiff (`jax.jvp`) needs "dense".
    positions: "learned" (an absolute position table in the stem) or
      "rotary" (RoPE on q and k in every layer; no position parameter).

  The compute settings remat, dtype and param_dtype (keyword-only) are
  `nn.precision.ComputeSettings`'s.
  """

  vocab_size: int = 27
  max_seq_len: int = 256
  num_layers: int = 12
  width: int = 768
  num_heads: int = 12
  mlp_ratio: int = 4
  frequency_dim: int = 256
  attention_impl: str = "dense"
  positions: str = "learned"

  def __post_init__(self):
    super().__post_init__()
    if self.positions not in POSITIONS:
      raise ValueError(
        f"positions={self.positions!r} is unknown; choose one of {POSITIONS}."
      )

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  @property
  def position_rows(self) -> int:
    """Rows of the stem's position table: 0 with rotary positions."""
    return self.max_seq_len if self.positions == "learned" else 0

  @property
  def rope_theta(self) -> float | None:
    """The layers' RoPE base; None without rotary positions."""
    return ROPE_THETA if self.positions == "rotary" else None

  def layer_spec(self) -> dit.DiTConfig:
    """DiT's layer settings at this width (the shared layer definition)."""
    return dit.DiTConfig(
      num_layers=self.num_layers,
      width=self.width,
      num_heads=self.num_heads,
      mlp_ratio=self.mlp_ratio,
      frequency_dim=self.frequency_dim,
      attention="dot_product",
      attention_impl=self.attention_impl,
      **self.compute_settings(),
    )

  def describe_attention(self) -> str:
    """The layers' attention path on this platform (`DiTConfig`'s)."""
    return self.layer_spec().describe_attention()


class TokenStem(nnx.Module):
  """tokens [batch, length] -> [batch, length, width]: the token table's
  rows plus, with `max_seq_len` rows (not 0), the position table's first
  `length`; the tables are stored in `param_dtype`. `max_seq_len=0` (the
  rotary positions) has no position table and takes any length."""

  def __init__(
    self,
    num_tokens: int,
    max_seq_len: int,
    width: int,
    *,
    param_dtype=jnp.float32,
    rngs,
  ):
    self.max_seq_len = max_seq_len
    self.tokens = nnx.Param(
      init.NORMAL_002(rngs.params(), (num_tokens, width), param_dtype)
    )
    if max_seq_len:
      self.positions = nnx.Param(
        init.NORMAL_002(rngs.params(), (max_seq_len, width), param_dtype)
      )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    if not self.max_seq_len:
      return self.tokens[...][tokens]
    length = tokens.shape[-1]
    if length > self.max_seq_len:
      raise ValueError(
        f"sequences of {length} tokens are longer than the position table"
        f" ({self.max_seq_len} rows); set model.max_seq_len >= {length}."
      )
    return self.tokens[...][tokens] + self.positions[...][:length]


class TokenReadout(dit.FinalLayer):
  """DiT's final layer with a vocabulary head: (h [batch, length, width],
  cond [batch, width]) -> logits [batch, length, vocab], float32.
  `TokenReadout(width, vocab_size, dtype=, param_dtype=, rngs=)`."""


def make_layers(spec: MDMConfig, num_layers: int, rngs):
  """`num_layers` DiT layers conditioned on the width-d time embedding,
  with RoPE in their attention for rotary positions."""
  return dit.make_layers(
    spec.layer_spec(), num_layers, rngs, rope_theta=spec.rope_theta
  )


def make_shell(spec: MDMConfig, rngs) -> dict[str, nnx.Module]:
  """The parts outside the layers (those of
  `tasks.masked_diffusion.token_denoise`)."""
  kw = spec.dtypes()
  return {
    "stem": TokenStem(
      spec.vocab_size + 1,
      spec.position_rows,
      spec.width,
      param_dtype=kw["param_dtype"],
      rngs=rngs,
    ),
    "noise_embed": embed.NoiseLevelEmbedder(
      spec.width, frequency_dim=spec.frequency_dim, **kw, rngs=rngs
    ),
    "readout": TokenReadout(spec.width, spec.vocab_size, **kw, rngs=rngs),
  }


def param_count(spec: MDMConfig) -> int:
  """Trainable parameters, from the module structure: per layer DiT's
  qkv, projection, MLP and adaLN (18 d^2 + 15 d at mlp_ratio 4); the token
  (vocab + [MASK]) and position tables (none with rotary positions); the
  timestep MLP; the readout's adaLN and vocabulary head."""
  d, m = spec.width, spec.mlp_ratio * spec.width
  layer = (3 * d * d + 3 * d) + (d * d + d) + (2 * d * m + m + d)
  layer += d * 6 * d + 6 * d
  return (
    spec.num_layers * layer
    + (spec.vocab_size + 1 + spec.position_rows) * d
    + spec.frequency_dim * d
    + d
    + d * d
    + d
    + d * 2 * d
    + 2 * d
    + d * spec.vocab_size
    + spec.vocab_size
  )
