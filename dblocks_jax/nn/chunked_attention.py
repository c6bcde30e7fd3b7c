"""Memory-efficient attention in pure JAX: the scores are never written out.

`attention(q, k, v, mask=...)` computes softmax(q k^T / sqrt(d) + mask) v,
the function `jax.nn.dot_product_attention` computes, without the
[batch, heads, q_len, k_len] score matrix.

Forward (online softmax). Queries and keys are cut into chunks of
`chunk_size` (the last one padded with masked keys, or with queries whose
rows are dropped). For each query chunk (`lax.map`) a loop over the key
chunks (`lax.fori_loop`) keeps, per query row and in float32, the running
maximum m of the scores seen so far, the running denominator
l = sum exp(s - m) and the running weighted sum acc = sum exp(s - m) v.
A new tile of scores s rescales both by exp(m_old - m_new). At the end
out = acc / l and the log-sum-exp lse = m + log l is kept per row. One
[batch, heads, q_chunk, k_chunk] tile of scores exists at a time, and the
program's size does not grow with the sequence length.

Backward (recompute, as FlashAttention's). A `jax.custom_vjp` saves q, k,
v, the float32 output and lse: O(batch x len x heads x head_dim). With
delta = rowsum(dout * out), a scan over the key chunks with an inner loop
over the query chunks recomputes each tile's probabilities
p = exp(s - lse) and accumulates
  dv_j += p^T dout_i,  ds = p * (dout_i v_j^T - delta_i),
  dk_j += ds^T q_i * scale,  dq_i += ds k_j * scale,
dk and dv per key chunk, dq in a [q_len, head_dim]-sized float32 buffer.

Memory: O(batch x heads x (len x head_dim + q_chunk x k_chunk)) in both
passes, against O(batch x heads x q_len x k_len) for the dense softmax.
Scores and accumulators are float32 whatever the inputs' dtype (tiles are
cast up); the output is cast back to q's dtype.

Masks (`MaskSpec`, a pytree: `offset` and `key_valid` may be traced):
  * bidirectional: every query sees every key, optionally only the keys
    with key_valid [batch, k_len] True (padding);
  * causal: query i, at absolute position offset + i, sees the keys
    j <= offset + i (offset = the length of a cached prefix when
    decoding); key_valid may also be given;
  * two_stream(T): the block-diffusion layout of the autoregressive family
    (`tasks.autoregressive.two_stream_mask`), rows and columns
    [noisy_0 .. noisy_{T-1} | clean_0 .. clean_{T-1}]: clean_i sees
    clean_j for j <= i; noisy_i sees clean_j for j < i and itself. Only
    two causal passes run, clean queries on clean keys and noisy queries on
    clean keys (strictly before); noisy_i's own score q_i . k_i seeds its
    row's online softmax. No clean-query x noisy-key score, and no
    noisy x noisy tile, is ever formed.
Causal passes skip the key chunks above the diagonal (forward) and the
query chunks before it (backward). A row that sees no key (possible only
with key_valid or a negative offset) outputs 0, with zero gradients.

Shapes: q [batch, q_len, heads, head_dim], k and v [batch, k_len,
kv_heads, head_dim] with heads a multiple of kv_heads (grouped heads: query
head n reads key head n // (heads / kv_heads)) -> [batch, q_len, heads,
head_dim], the layout of `jax.nn.dot_product_attention`. Grouped keys and
values are repeated to `heads` before the chunked pass (O(len) memory).

Being a `custom_vjp`, the function has reverse-mode derivatives only
(`jax.grad`, `jax.vjp`), not forward mode (`jax.jvp`, `jax.linearize`).
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

KINDS = ("bidirectional", "causal", "two_stream")
F32 = jnp.float32


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=("offset", "key_valid"),
  meta_fields=("kind", "length"),
)
@dataclasses.dataclass(frozen=True, eq=False)
class MaskSpec:
  """Which keys each query sees (see the module docstring).

  kind: one of KINDS; length: T of `two_stream`; offset: the causal
  queries' first absolute position (int or int scalar array); key_valid:
  optional [batch, k_len] bool, False = padding (not with two_stream).
  Build with `bidirectional`, `causal` or `two_stream`.
  """

  kind: str
  length: int | None = None
  offset: Any = 0
  key_valid: jax.Array | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"mask kind={self.kind!r} is unknown; choose {KINDS}.")

  @classmethod
  def bidirectional(cls, key_valid=None) -> "MaskSpec":
    return cls("bidirectional", key_valid=key_valid)

  @classmethod
  def causal(cls, offset=0, key_valid=None) -> "MaskSpec":
    return cls("causal", offset=offset, key_valid=key_valid)

  @classmethod
  def two_stream(cls, length: int) -> "MaskSpec":
    if length < 1:
      raise ValueError(f"two_stream needs length >= 1, got {length}")
    return cls("two_stream", length=length)

  def dense(self, q_len: int, k_len: int) -> jax.Array:
    """The same mask as [1 or batch, 1, q_len, k_len] bool, True = attend."""
    if self.kind == "two_stream":
      _check_two_stream(self.length, q_len, k_len)
      i = jnp.arange(self.length)[:, None]
      j = jnp.arange(self.length)[None, :]
      noisy_rows = jnp.concatenate([i == j, j < i], axis=1)
      clean_rows = jnp.concatenate([jnp.zeros_like(i == j), j <= i], axis=1)
      return jnp.concatenate([noisy_rows, clean_rows], axis=0)[None, None]
    visible = jnp.ones((q_len, k_len), bool)
    if self.kind == "causal":
      i = jnp.arange(q_len)[:, None] + self.offset
      visible = jnp.arange(k_len)[None, :] <= i
    visible = visible[None, None]
    if self.key_valid is not None:
      visible = visible & self.key_valid[:, None, None, :]
    return visible


def _check_two_stream(length, q_len, k_len):
  if q_len != 2 * length or k_len != 2 * length:
    raise ValueError(
      f"two_stream({length}) needs q_len = k_len = {2 * length}, got"
      f" {q_len} and {k_len}"
    )


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  mask: MaskSpec,
  chunk_size: int = 128,
  q_chunk_size: int | None = None,
  scale: float | None = None,
) -> jax.Array:
  """softmax(q k^T scale, masked by `mask`) v, chunked (module docstring).

  q: [batch, q_len, heads, head_dim]; k, v: [batch, k_len, kv_heads,
  head_dim]; chunk_size: keys per chunk; q_chunk_size: queries per chunk
  (default chunk_size); scale: default 1 / sqrt(head_dim).
  Returns [batch, q_len, heads, head_dim] in q's dtype.
  """
  if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
    raise ValueError(
      f"q, k, v must be [batch, len, heads, head_dim] with k.shape =="
      f" v.shape, got {q.shape}, {k.shape}, {v.shape}"
    )
  heads, kv_heads = q.shape[2], k.shape[2]
  if heads % kv_heads or q.shape[-1] != k.shape[-1]:
    raise ValueError(
      f"q {q.shape} and k {k.shape} need heads % kv_heads == 0 and one head_dim"
    )
  if chunk_size < 1 or (q_chunk_size is not None and q_chunk_size < 1):
    raise ValueError("chunk sizes must be >= 1")
  if heads != kv_heads:
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  q_chunk = chunk_size if q_chunk_size is None else q_chunk_size
  q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # [b, h, len, d]
  run = functools.partial(
    _chunked, scale=float(scale), q_chunk=q_chunk, k_chunk=chunk_size
  )
  if mask.kind == "two_stream":
    if mask.key_valid is not None:
      raise ValueError("two_stream takes no key_valid")
    t = mask.length
    _check_two_stream(t, q.shape[2], k.shape[2])
    kc, vc = k[:, :, t:], v[:, :, t:]  # The clean keys and values.
    # noisy_i: clean_j for j <= i - 1, and its own key (ek, ev).
    own = dict(ek=k[:, :, :t], ev=v[:, :, :t])
    noisy = run(q[:, :, :t], kc, vc, None, -1, causal=True, **own)
    clean = run(q[:, :, t:], kc, vc, None, 0, causal=True)
    out = jnp.concatenate([noisy, clean], axis=2)
  else:
    causal = mask.kind == "causal"
    offset = mask.offset if causal else 0
    key_valid = mask.key_valid
    if key_valid is not None:
      key_valid = jnp.broadcast_to(key_valid, (k.shape[0], k.shape[2]))
    out = run(q, k, v, key_valid, offset, causal=causal)
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class _Tiling:
  """The static settings of one chunked pass."""

  scale: float
  q_chunk: int
  k_chunk: int
  causal: bool
  q_len: int
  k_len: int


def _chunked(
  q,
  k,
  v,
  key_valid,
  offset,
  *,
  causal,
  scale,
  q_chunk,
  k_chunk,
  ek=None,
  ev=None,
):
  """One pass over [b, h, len, d] inputs -> float32 [b, h, q_len, d].

  Causal: query i sees key j when j <= i + offset. key_valid: [b, k_len]
  bool or None. ek, ev: optional [b, h, q_len, d], one extra key and value
  per query row that the row always sees (two_stream's own noisy key).
  Chunks longer than the sequence shrink to it.
  """
  q_len, k_len = q.shape[2], k.shape[2]
  tiling = _Tiling(
    scale=scale,
    q_chunk=min(q_chunk, q_len),
    k_chunk=min(k_chunk, k_len),
    causal=causal,
    q_len=q_len,
    k_len=k_len,
  )
  if key_valid is None:
    key_valid = jnp.ones((1, k_len), bool)
  offset = jnp.asarray(offset, jnp.int32)
  return _flash(tiling, q, k, v, ek, ev, key_valid, offset)


def _blocks(x: jax.Array, chunk: int, fill=0) -> jax.Array:
  """x: [b, h, n, ...] -> [ceil(n / chunk), b, h, chunk, ...], the tail
  padded with `fill`."""
  n = x.shape[2]
  pad = -n % chunk
  widths = [(0, 0)] * x.ndim
  widths[2] = (0, pad)
  x = jnp.pad(x, widths, constant_values=fill)
  x = x.reshape(x.shape[:2] + ((n + pad) // chunk, chunk) + x.shape[3:])
  return jnp.moveaxis(x, 2, 0)


def _unblock(x: jax.Array, n: int) -> jax.Array:
  """[chunks, b, h, chunk, ...] -> [b, h, n, ...] (the padding dropped)."""
  x = jnp.moveaxis(x, 0, 2)
  x = x.reshape(x.shape[:2] + (-1,) + x.shape[4:])
  return x[:, :, :n]


def _key_blocks(key_valid: jax.Array, chunk: int) -> jax.Array:
  """[b or 1, k_len] -> [chunks, b or 1, chunk], padded keys False."""
  return _blocks(key_valid[:, None, :], chunk, fill=False)[:, :, 0]


def _visible(t: _Tiling, q_start, k_start, valid, offset) -> jax.Array:
  """One tile's mask [b or 1, 1, q_chunk, k_chunk]; valid: [b or 1,
  k_chunk]."""
  visible = valid[:, None, None, :]
  if t.causal:
    i = q_start + jnp.arange(t.q_chunk)[:, None] + offset
    j = k_start + jnp.arange(t.k_chunk)[None, :]
    visible = visible & (j <= i)
  return visible


def _tile_scores(t, qi, kj, q_start, k_start, valid, offset):
  """qi [b, h, cq, d] (scaled, float32), kj [b, h, ck, d] -> masked
  float32 scores [b, h, cq, ck], -inf where hidden."""
  s = jnp.einsum("bhqd,bhkd->bhqk", qi, kj.astype(F32))
  return jnp.where(_visible(t, q_start, k_start, valid, offset), s, -jnp.inf)


def _last_key_chunk(t: _Tiling, i, offset, num_k):
  """1 + the last key chunk query chunk i sees (num_k unless causal)."""
  if not t.causal:
    return num_k
  last_query = (i + 1) * t.q_chunk - 1 + offset
  return jnp.clip(last_query // t.k_chunk + 1, 0, num_k)


def _first_query_chunk(t: _Tiling, j, offset, num_q):
  """The first query chunk that sees key chunk j (0 unless causal)."""
  if not t.causal:
    return 0
  return jnp.clip((j * t.k_chunk - offset) // t.q_chunk, 0, num_q)


def _forward(t: _Tiling, q, k, v, ek, ev, key_valid, offset):
  """-> out [b, h, q_len, d] float32, lse [b, h, q_len] float32."""
  kb, vb = _blocks(k, t.k_chunk), _blocks(v, t.k_chunk)
  valid = _key_blocks(key_valid, t.k_chunk)
  num_k = kb.shape[0]
  qb = _blocks(q, t.q_chunk)
  extra = (
    None if ek is None else (_blocks(ek, t.q_chunk), _blocks(ev, t.q_chunk))
  )

  def query_chunk(xs):
    i, qi, extra_i = xs
    qi = qi.astype(F32) * t.scale
    rows = qi.shape[:3]
    if extra_i is None:  # Nothing seen yet.
      state = (
        jnp.full(rows, -jnp.inf, F32),
        jnp.zeros(rows, F32),
        jnp.zeros(qi.shape, F32),
      )
    else:  # The row's own key, seen with probability exp(s - m) = 1.
      eki, evi = extra_i
      state = (
        jnp.sum(qi * eki.astype(F32), -1),
        jnp.ones(rows, F32),
        evi.astype(F32),
      )

    def key_chunk(j, state):
      m, den, acc = state
      s = _tile_scores(
        t, qi, kb[j], i * t.q_chunk, j * t.k_chunk, valid[j], offset
      )
      m_new = jnp.maximum(m, s.max(-1))
      m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows seeing none
      p = jnp.exp(s - m_safe[..., None])
      alpha = jnp.exp(m - m_safe)
      den = alpha * den + p.sum(-1)
      pv = jnp.einsum("bhqk,bhkd->bhqd", p, vb[j].astype(F32))
      return m_new, den, alpha[..., None] * acc + pv

    last = _last_key_chunk(t, i, offset, num_k)
    m, den, acc = jax.lax.fori_loop(0, last, key_chunk, state)
    seen = den > 0
    out = acc / jnp.where(seen, den, 1.0)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, den, 1.0)), 0.0)
    return out, lse

  xs = (jnp.arange(qb.shape[0]), qb, extra)
  out, lse = jax.lax.map(query_chunk, xs)
  return _unblock(out, t.q_len), _unblock(lse, t.q_len)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(t: _Tiling, q, k, v, ek, ev, key_valid, offset):
  return _forward(t, q, k, v, ek, ev, key_valid, offset)[0]


def _flash_fwd(t: _Tiling, q, k, v, ek, ev, key_valid, offset):
  out, lse = _forward(t, q, k, v, ek, ev, key_valid, offset)
  return out, (q, k, v, ek, ev, key_valid, offset, out, lse)


def _flash_bwd(t: _Tiling, residuals, dout):
  q, k, v, ek, ev, key_valid, offset, out, lse = residuals
  dout = dout.astype(F32)
  delta = jnp.sum(dout * out, -1)  # [b, h, q_len]
  qb, dob = _blocks(q, t.q_chunk), _blocks(dout, t.q_chunk)
  lseb, deltab = _blocks(lse, t.q_chunk), _blocks(delta, t.q_chunk)
  num_q = qb.shape[0]
  valid = _key_blocks(key_valid, t.k_chunk)
  kb, vb = _blocks(k, t.k_chunk), _blocks(v, t.k_chunk)

  def key_chunk(dq, xs):
    j, kj, vj, valid_j = xs
    kj, vj = kj.astype(F32), vj.astype(F32)

    def query_chunk(i, state):
      dk, dv, dq = state
      qi = qb[i].astype(F32) * t.scale
      s = _tile_scores(t, qi, kj, i * t.q_chunk, j * t.k_chunk, valid_j, offset)
      p = jnp.exp(s - lseb[i][..., None])
      dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p, dob[i])
      dp = jnp.einsum("bhqd,bhkd->bhqk", dob[i], vj)
      ds = p * (dp - deltab[i][..., None])
      dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds, qi)
      dq = dq.at[i].add(jnp.einsum("bhqk,bhkd->bhqd", ds, kj))
      return dk, dv, dq

    first = _first_query_chunk(t, j, offset, num_q)
    zeros = jnp.zeros(kj.shape, F32)
    dk, dv, dq = jax.lax.fori_loop(
      first, num_q, query_chunk, (zeros, zeros, dq)
    )
    return dq, (dk, dv)

  dq = jnp.zeros(qb.shape, F32)
  xs = (jnp.arange(kb.shape[0]), kb, vb, valid)
  dq, (dk, dv) = jax.lax.scan(key_chunk, dq, xs)
  dq = _unblock(dq, t.q_len) * t.scale
  dk, dv = _unblock(dk, t.k_len), _unblock(dv, t.k_len)
  dek = dev = None
  if ek is not None:  # The rows' own keys: elementwise, no tile.
    qs = q.astype(F32) * t.scale
    ekf = ek.astype(F32)
    p = jnp.exp(jnp.sum(qs * ekf, -1) - lse)
    dev = (p[..., None] * dout).astype(ev.dtype)
    ds = p * (jnp.sum(dout * ev.astype(F32), -1) - delta)
    dq = dq + ds[..., None] * ekf * t.scale
    dek = (ds[..., None] * qs).astype(ek.dtype)
  grads = (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype))
  return grads + (dek, dev, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)
