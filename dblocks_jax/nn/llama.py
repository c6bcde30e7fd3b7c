"""Llama-style layers: RMSNorm, rotary positions, SwiGLU, no biases, with
optional per-token AdaLN-Zero conditioning and a key/value cache.

A layer maps x [batch, tokens, width] (and cond [batch, tokens, cond_dim]
when conditioned) to the same shape and also returns its keys and values
[batch, tokens, heads, head_dim], so that a generator can keep them. Given
a `prefix` (cached keys, values and a validity mask over the cache's
slots), every query also attends to the valid cached slots: decoding one
token then costs O(cache length), not a pass over the whole sequence.

Conditioned (DiT's AdaLN-Zero, with a modulation per token):
  shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(cond))
  x = x + gate1 * Attn(RMSNorm(x) * (1 + scale1) + shift1)
  x = x + gate2 * SwiGLU(RMSNorm(x) * (1 + scale2) + shift2)
Unconditioned: the same without modulation and gates (Llama-2's layer).

A condition is [batch, tokens, cond_dim], or `Segments`: runs of tokens
that each hold their condition once at the width it varies, e.g. the 2T
layout's noisy tokens [b, T, cond_dim] and clean tokens, all of which
share one vector [1, 1, cond_dim]. The modulation is then computed per run
(one [6 width] row for the shared run, not [b, T, 6 width]) and applied to
each run's tokens: the same values as the broadcast condition, without
the [b, 2T, 6 width] modulation that the backward pass would keep.

`keep` (the training pass's, `LlamaStack.__call__`): the last layer's
output is needed only at the first `keep` tokens (the 2T layout's noisy
ones), so that layer runs attention for every query (the keys and values
of all tokens are what the kept ones read) and its output projection,
residual and SwiGLU for the kept tokens only: the same values there.

`lean_backward` (a memory saving, the same values; reverse mode only):
each sublayer's norm and modulation, and each gated last Linear, is one
function under `nn.remat.recomputed`, whose backward pass keeps only its
inputs and recomputes it when its cotangent arrives. A conditioned layer
then keeps, per sublayer, x, the condition (shared by the layers) and the
last Linear's input, not the RMSNorm's products, the [b, t, 6 width]
modulation of a per-token condition, n * (1 + scale) nor the gated
output: one more modulation matmul, output projection and SwiGLU down
projection per layer in backward. An unconditioned layer's RMSNorms keep
only x too (the same lean norm, so the baseline pays no handicap).

Attention paths (`attention_impl`: dense, chunked, auto) are
`nn.attention`'s, re-exported here (`resolve_attention`, `attend`, ...).
The layers pass their masks as structure (`MaskSpec`, the models' call
sites) or as a dense bool array (which always takes the dense path).

The Linears compute in `dtype` (their weights stored in `param_dtype`); the
RMSNorms, the softmax (every path takes it in float32) and the residual
stream are float32 (`nn.precision`). Queries, keys and values (and so the
KV cache) are cast to `dtype` after the rotary embedding.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import init, layers, precision
from dblocks_jax.nn import linear as linear_lib
from dblocks_jax.nn import remat as remat_lib

# The attention paths' resolver, shared with `nn.attention.SelfAttention`.
from dblocks_jax.nn.attention import (  # noqa: F401
  ATTENTION_IMPLS,
  CUDNN_MAX_HEAD_DIM,
  MASK_KINDS,
  attend,
  describe_attention,
  mask_kind,
  resolve_attention,
)
from dblocks_jax.nn.chunked_attention import MaskSpec
from dblocks_jax.nn.rope import rotary  # Shared with nn.attention.


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=("parts",),
  meta_fields=("lengths",),
)
@dataclasses.dataclass(frozen=True)
class Segments:
  """Per-token values over consecutive runs of tokens (module docstring):
  parts[i] [batch or 1, lengths[i] or 1, dim] stands for the next
  lengths[i] tokens."""

  parts: tuple
  lengths: tuple

  def __post_init__(self):
    if len(self.parts) != len(self.lengths):
      raise ValueError(
        f"{len(self.parts)} parts for {len(self.lengths)} lengths."
      )
    for part, length in zip(self.parts, self.lengths, strict=True):
      if part.ndim != 3 or part.shape[1] not in (1, length):
        raise ValueError(
          f"a part [batch or 1, {length} or 1, dim], got {part.shape}."
        )

  @classmethod
  def of(cls, x) -> "Segments":
    """x: `Segments`, or [b, t, dim] (one run of t tokens)."""
    if isinstance(x, Segments):
      return x
    return cls((x,), (x.shape[1],))

  def map(self, fn) -> "Segments":
    """fn applied to every part (the last axis may change)."""
    return Segments(tuple(fn(p) for p in self.parts), self.lengths)

  def head(self, tokens: int) -> "Segments":
    """The runs of the first `tokens` tokens."""
    parts, lengths, left = [], [], tokens
    for part, length in zip(self.parts, self.lengths, strict=True):
      if left <= 0:
        break
      n = min(length, left)
      parts.append(part if part.shape[1] == 1 else part[:, :n])
      lengths.append(n)
      left -= n
    return Segments(tuple(parts), tuple(lengths))

  def apply(self, fn, *xs):
    """fn(part, *x_run) per run, x: [b, t, ...] cut along the tokens ->
    [b, t, ...], the runs' outputs concatenated."""
    outs, start = [], 0
    for part, length in zip(self.parts, self.lengths, strict=True):
      run = [x[:, start : start + length] for x in xs]
      outs.append(fn(part, *run))
      start += length
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


KeyValue = tuple[jax.Array, jax.Array]
# (keys [b, slots, heads, head_dim], values, valid [b, slots] bool).
Prefix = tuple[jax.Array, jax.Array, jax.Array]


def linear(
  in_features: int,
  out_features: int,
  *,
  dtype=jnp.float32,
  param_dtype=jnp.float32,
  rngs: nnx.Rngs,
):
  """Llama's Linear (`nn.init.linear`): no bias, N(0, 0.02) weights.

  x: [..., in_features] -> [..., out_features] float32."""
  return init.linear(
    in_features,
    out_features,
    use_bias=False,
    kernel_init=init.NORMAL_002,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


class Attention(nnx.Module):
  """Multi-head attention with RoPE and no biases.

  x: [batch, tokens, width], positions: [tokens] or [batch, tokens], mask:
  a `MaskSpec` or a [batch or 1, 1, tokens, tokens] bool array (True =
  attend) -> ([batch, tokens, width], (keys, values) of x).

  `attention_impl` ("dense", "chunked" or "auto"; the module docstring)
  picks the path; "auto" is resolved for the platform the module is built
  on (`resolve_attention`), per mask kind. The chunked and cuDNN paths have
  reverse-mode derivatives only: forward mode (`jax.jvp`, `jax.linearize`)
  needs attention_impl="dense". With a `prefix` (decoding one or a few
  tokens against a cache) attention is always dense: its mask is the
  cache's validity beside `mask`, and its scores are O(tokens x cache).
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    theta: float,
    attention_impl: str = "dense",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by {num_heads} heads")
    self.platform = jax.default_backend()
    resolve_attention(  # Checks the name.
      attention_impl,
      self.platform,
      "causal",
      dtype=dtype,
      head_dim=width // num_heads,
    )
    self.attention_impl = attention_impl
    self.num_heads, self.theta, self.dtype = num_heads, theta, dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = linear(width, 3 * width, **kw)
    self.out = linear(width, width, **kw)

  def __call__(
    self,
    x,
    positions,
    mask,
    *,
    prefix: Prefix | None = None,
    keep=None,
    project: bool = True,
  ):
    """-> (the output at the first `keep` tokens, all without, (keys,
    values) of every token); without `project`, the output short of the
    output projection `out` ([.., width] either way)."""
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = jnp.moveaxis(qkv, 2, 0)
    q = rotary(q, positions, self.theta)
    k = rotary(k, positions, self.theta)
    if precision.below_float32(self.dtype):
      q, k, v = (t.astype(self.dtype) for t in (q, k, v))
    if prefix is None:
      path = resolve_attention(
        self.attention_impl,
        self.platform,
        mask_kind(mask),
        dtype=q.dtype,
        head_dim=head_dim,
      )
      y = attend(q, k, v, mask, path)
    else:
      y = _attend_with_prefix(q, k, v, mask, prefix)
    y = y.reshape(batch, tokens, width)
    if keep is not None:
      y = y[:, :keep]
    return (self.out(y) if project else y), (k, v)


def _attend_with_prefix(q, k, v, mask, prefix: Prefix) -> jax.Array:
  """Dense attention of q [b, t, heads, head_dim] to the valid cached slots
  of `prefix` and to k, v (under `mask`, a `MaskSpec` or [b or 1, 1, t, t]
  bool) -> [b, t, heads, head_dim]."""
  batch, tokens = q.shape[:2]
  if isinstance(mask, MaskSpec):
    mask = mask.dense(tokens, tokens)
  cached_k, cached_v, valid = prefix
  keys = jnp.concatenate([cached_k, k], axis=1)
  values = jnp.concatenate([cached_v, v], axis=1)
  valid = jnp.broadcast_to(
    valid[:, None, None], (batch, 1, tokens, valid.shape[-1])
  )
  mask = jnp.broadcast_to(mask, (batch, 1, tokens, tokens))
  mask = jnp.concatenate([valid, mask], axis=-1)
  return jax.nn.dot_product_attention(q, keys, values, mask=mask)


class SwiGLU(nnx.Module):
  """x -> down(silu(gate(x)) * up(x)), no biases. [..., width] -> same."""

  def __init__(
    self,
    width: int,
    hidden: int,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = linear(width, hidden, **kw)
    self.up = linear(width, hidden, **kw)
    self.down = linear(hidden, width, **kw)

  def __call__(self, x: jax.Array, *, project: bool = True) -> jax.Array:
    """Without `project`: the hidden silu(gate(x)) * up(x) [..., hidden],
    short of `down`."""
    hidden = jax.nn.silu(self.gate(x)) * self.up(x)
    return self.down(hidden) if project else hidden


class LlamaLayer(nnx.Module):
  """One pre-norm Llama layer; AdaLN-Zero conditioned with `cond_dim`
  (see the module docstring)."""

  def __init__(
    self,
    width: int,
    num_heads: int,
    mlp_dim: int,
    *,
    cond_dim: int | None = None,
    norm_eps: float = 1e-6,
    rope_theta: float = 10000.0,
    attention_impl: str = "dense",
    lean_backward: bool = False,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm = dict(epsilon=norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.lean_backward = lean_backward
    self.norm1 = precision.rms_norm(width, **norm)
    self.attention = Attention(
      width, num_heads, theta=rope_theta, attention_impl=attention_impl, **kw
    )
    self.norm2 = precision.rms_norm(width, **norm)
    self.mlp = SwiGLU(width, mlp_dim, **kw)
    self.adaln = (
      init.linear(cond_dim, 6 * width, zero=True, **kw)
      if cond_dim is not None
      else None
    )

  def __call__(self, x, cond, positions, mask, prefix=None, *, keep=None):
    """x: [b, t, width]; cond: [b, t, cond_dim], `Segments` or None ->
    (x [b, keep or t, width], (k, v) [b, t, heads, head_dim])."""
    attend = functools.partial(
      self.attention, positions=positions, mask=mask, prefix=prefix, keep=keep
    )
    if self.adaln is None:
      norm1, norm2 = self.norm1, self.norm2
      if self.lean_backward:
        norm1, norm2 = _lean_norm(norm1), _lean_norm(norm2)
      y, kv = attend(norm1(x))
      x = x[:, :keep] + y
      return x + self.mlp(norm2(x)), kv
    if self.lean_backward:
      return self._lean_conditioned(x, cond, attend, keep)
    # Per run of the condition: m [b or 1, t or 1, 6 width], its sixths
    # shift1, scale1, gate1, shift2, scale2, gate2.
    modulation = Segments.of(cond).map(lambda c: self.adaln(jax.nn.silu(c)))
    h = modulation.apply(lambda m, n: _modulate(n, m, 0), self.norm1(x))
    y, kv = attend(h)
    if keep is not None:
      x, modulation = x[:, :keep], modulation.head(keep)
    x = x + modulation.apply(lambda m, y: _sixth(m, 2) * y, y)
    h = modulation.apply(lambda m, n: _modulate(n, m, 3), self.norm2(x))
    return x + modulation.apply(lambda m, y: _sixth(m, 5) * y, self.mlp(h)), kv

  def _lean_conditioned(self, x, cond, attend, keep):
    """The conditioned layer with `lean_backward` (`_lean_uses`): the same
    values; per run of the condition, each norm + modulation and each gated
    last Linear is one recomputed function of the run's condition."""
    runs = Segments.of(cond)
    modulate, gate = _lean_uses(self.adaln)
    h = runs.apply(lambda c, x: modulate(x, c, 0, self.norm1), x)
    a, kv = attend(h, project=False)
    if keep is not None:
      x, runs = x[:, :keep], runs.head(keep)
    x = x + runs.apply(lambda c, a: gate(a, c, 2, self.attention.out), a)
    h = runs.apply(lambda c, x: modulate(x, c, 3, self.norm2), x)
    a = self.mlp(h, project=False)
    return x + runs.apply(lambda c, a: gate(a, c, 5, self.mlp.down), a), kv


def _sixth(m: jax.Array, i: int) -> jax.Array:
  """The i-th of the six equal parts of m's last axis."""
  width = m.shape[-1] // 6
  return m[..., i * width : (i + 1) * width]


def _modulate(n: jax.Array, m: jax.Array, shift: int) -> jax.Array:
  """n * (1 + scale) + shift, the modulation m's sixths `shift` and
  `shift` + 1."""
  return n * (1 + _sixth(m, shift + 1)) + _sixth(m, shift)


def _sixths(c, kernel, bias, first: int, count: int, dtype) -> jax.Array:
  """Sixths first .. first + count - 1 of the modulation Linear(SiLU(c)),
  computed for their columns of kernel [cond_dim, 6 width] (and bias
  [6 width] or None) only: c [.., cond_dim] -> [.., count width] float32,
  as the Linear (`nn.linear.matmul` in `dtype`)."""
  width = kernel.shape[-1] // 6
  columns = slice(first * width, (first + count) * width)
  out = linear_lib.matmul(jax.nn.silu(c), kernel[:, columns], dtype)
  if bias is not None:
    out = out + bias[columns].astype(jnp.float32)
  return out


def _rms_norm(x, scale, epsilon: float) -> jax.Array:
  """RMSNorm of x [..., width] with scale [width]: `nnx.RMSNorm`'s float32
  values, x * (rsqrt(mean(x^2) + epsilon) * scale)."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return x * (jax.lax.rsqrt(var + epsilon) * scale.astype(jnp.float32))


def _lean_norm(norm: nnx.RMSNorm):
  """x -> norm(x) (`_rms_norm`) under `nn.remat.recomputed`: backward
  keeps x and the scale only, not the rsqrt and the products it would."""
  scale, epsilon = norm.scale[...], norm.epsilon
  return lambda x: remat_lib.recomputed(
    lambda x, scale: _rms_norm(x, scale, epsilon)
  )(x, scale)


def _lean_uses(adaln):
  """(modulate, gate) of a conditioned layer with `lean_backward`, each
  under `nn.remat.recomputed` (the module docstring):

    modulate(x, c, i, norm) = norm(x) * (1 + scale) + shift, scale and
      shift the sixths i + 1 and i of adaln(SiLU(c));
    gate(a, c, i, out) = sixth i * out(a), out a Linear without bias.

  Their backward pass keeps x (or a), c and the parameters, and recomputes
  the norm, the sixths and out(a) from them when its cotangent arrives:
  the same values as `_modulate` and `_sixth` of the whole modulation."""
  kernel = adaln.kernel[...]
  bias = None if adaln.bias is None else adaln.bias[...]
  dtype = adaln.dtype or jnp.float32

  def modulate(x, c, i, norm):
    epsilon = norm.epsilon

    def fn(x, norm_scale, c, kernel, bias):
      shift, scale = jnp.split(_sixths(c, kernel, bias, i, 2, dtype), 2, -1)
      return _rms_norm(x, norm_scale, epsilon) * (1 + scale) + shift

    return remat_lib.recomputed(fn)(x, norm.scale[...], c, kernel, bias)

  def gate(a, c, i, out):
    if out.bias is not None:
      raise ValueError("gate takes a Linear without bias (Llama's).")
    out_dtype = out.dtype or jnp.float32

    def fn(a, out_kernel, c, kernel, bias):
      y = linear_lib.matmul(a, out_kernel, out_dtype)
      return _sixths(c, kernel, bias, i, 1, dtype) * y

    return remat_lib.recomputed(fn)(a, out.kernel[...], c, kernel, bias)

  return modulate, gate


class LlamaStack(layers.Stack):
  """A contiguous group of Llama layers: one DiffusionBlocks block, or a
  whole baseline network.

  `__call__` is the training pass; `prefill` also returns every layer's keys
  and values; `decode` runs new tokens against a cache (one `Prefix` per
  layer). `remat` names what `__call__` keeps of each layer for backward
  (`nn.remat`: "none", "full" or a `jax.checkpoint_policies` name). Each
  pass casts x up to the float32 residual stream first. `mask` is a
  `MaskSpec` (or a dense bool array, `Attention`); `attention_impl` (in
  `layer_kw`) picks each layer's attention path.
  """

  def __init__(
    self, num_layers: int, *, remat: str | bool = "none", rngs, **layer_kw
  ):
    stack = [LlamaLayer(rngs=rngs, **layer_kw) for _ in range(num_layers)]
    super().__init__(stack, remat=remat)

  def __call__(self, x, cond=None, *, positions, mask, keep=None):
    """x: [b, t, width] -> [b, keep or t, width]: with `keep`, the output
    at the first `keep` tokens only (the module docstring)."""
    x = precision.residual(x)
    last = len(self.layers) - 1
    for i, layer in enumerate(self.layers):
      kept = keep if i == last else None
      call = remat_lib.checkpointed(
        _layer_pass(cond, positions, mask, kept), self.remat
      )
      x = call(layer, x)
    return x if keep is None or self.layers else x[:, :keep]

  def prefill(self, x, cond=None, *, positions, mask):
    """-> (x, [(keys, values) per layer]), each [b, t, heads, head_dim]."""
    x = precision.residual(x)
    kvs = []
    for layer in self.layers:
      x, kv = layer(x, cond, positions, mask)
      kvs.append(kv)
    return x, kvs

  def decode(self, x, cond, *, positions, prefixes: list[Prefix]):
    """x: [b, 1, width], one new token that attends to itself and to the
    valid slots of `prefixes` -> (x, [(keys, values) of x per layer])."""
    if x.shape[1] != 1:
      raise ValueError(f"decode takes one token at a time, got {x.shape[1]}.")
    self_mask = MaskSpec.causal()  # The token sees itself.
    x = precision.residual(x)
    kvs = []
    for layer, prefix in zip(self.layers, prefixes, strict=True):
      x, kv = layer(x, cond, positions, self_mask, prefix)
      kvs.append(kv)
    return x, kvs


def _layer_pass(cond, positions, mask, keep):
  """`(layer, x) -> x` of one layer's training pass (for `nn.remat`, which
  would trace a keyword default: `keep` stays a Python int here)."""
  return lambda layer, x: layer(x, cond, positions, mask, keep=keep)[0]
