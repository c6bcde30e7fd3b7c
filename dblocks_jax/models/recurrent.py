"""The recurrent-depth (Huginn-style) language model (method_spec 2.5).

Layout (Geiping et al. 2025), every layer a causal Llama layer
(`nn.llama`):

  e   = prelude(embed[tokens])                    [batch, length, width]
  s_0 ~ N(0, state_std^2)                         a random start per token
  s_k = norm(core(adapter([s_{k-1}; e])))         k = 1 .. r, tied weights
  logits = head(norm(coda(s_r)))

The adapter is a bias-free Linear(2 width -> width) on the concatenated
state and prelude output (Huginn's input injection at every iteration).
The RMSNorm after each iteration keeps the state's scale fixed over any
number of iterations (Huginn normalises inside its sandwich layers; ours
are Llama's pre-norm layers, so the state is normalised once per
iteration).

Training draws the number of iterations r per step and backpropagates only
through the last `backprop_depth` of them (`forward` with a traced
`depth`); the first r - backprop_depth run under stop_gradient in a
`while_loop`, so a step's graph holds `backprop_depth` iterations whatever r
is. Inference runs K iterations as one scanned body.

Generation keeps a key/value cache for the prelude, for every iteration of
the core ([K] stacked: at iteration k a token attends to the iteration-k
keys of the tokens before it, as in training) and for the coda.

Shapes: tokens [batch, length] int; states and e [batch, length, width];
logits [batch, length, vocab]; caches: per layer (keys, values) [batch,
slots, heads, head_dim], the core's with a leading [K].

Precision (`nn.precision`): the layers' settings (`ar.ARConfig`'s dtype and
param_dtype); the state, the norms and the logits are float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.models import ar
from dblocks_jax.nn import llama, precision
from dblocks_jax.nn.chunked_attention import MaskSpec


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
  """The recurrent-depth LM's hyper-parameters.

  Attributes:
    layers: the Llama layer settings (`ar.ARConfig`); its `num_layers` is
      prelude + recurrent + coda.
    prelude_layers: layers before the recurrence (run once).
    recurrent_layers: the core iterated with tied weights.
    coda_layers: layers after the recurrence (run once).
    state_std: standard deviation of the random initial state.
  """

  layers: ar.ARConfig
  prelude_layers: int = 2
  recurrent_layers: int = 4
  coda_layers: int = 2
  state_std: float = 1.0

  def __post_init__(self):
    p, r, c = self.prelude_layers, self.recurrent_layers, self.coda_layers
    if r < 1 or p < 0 or c < 0:
      raise ValueError(
        f"recurrent_layers={r} must be at least 1, prelude_layers={p} and"
        f" coda_layers={c} at least 0."
      )
    if p + r + c != self.layers.num_layers:
      raise ValueError(
        f"prelude_layers={p} + recurrent_layers={r} + coda_layers={c} ="
        f" {p + r + c} must equal num_layers={self.layers.num_layers};"
        " change one of them."
      )


class RecurrentLM(nnx.Module):
  """The recurrent-depth baseline (see the module docstring)."""

  def __init__(self, spec: RecurrentConfig, *, rngs: nnx.Rngs):
    self.spec = spec
    s = spec.layers
    self.embed = ar.token_embedding(s, rngs)
    front = make_prelude(spec, rngs)
    self.prelude, self.adapter = front["prelude"], front["adapter"]
    self.core = ar.make_layers(
      s, spec.recurrent_layers, rngs, conditioned=False
    )
    self.state_norm = ar.final_norm(s, rngs)
    self.coda = ar.make_layers(s, spec.coda_layers, rngs, conditioned=False)
    self.norm = ar.final_norm(s, rngs)
    self.head = llama.linear(s.width, s.vocab_size, **s.dtypes(), rngs=rngs)

  # ----- Pieces ---------------------------------------------------------------

  def initial_state(self, key, batch: int, positions) -> jax.Array:
    """s_0 [batch, len(positions), width]; the state of position p is drawn
    with fold_in(key, p), so a cached decode meets the same start as a
    full pass."""
    width = self.spec.layers.width

    def draw(position):
      return jax.random.normal(
        jax.random.fold_in(key, position), (batch, width)
      )

    return self.spec.state_std * jnp.moveaxis(jax.vmap(draw)(positions), 0, 1)

  def iterate(self, state, e, *, positions, mask, prefixes=None, keep_kv=False):
    """One iteration: s -> norm(core(adapter([s; e]))). With `keep_kv` (a
    prefill) or `prefixes` (one token against the cache) also returns the
    core's (keys, values)."""
    x = self.adapter(jnp.concatenate([state, e], -1))
    if prefixes is not None:
      x, kvs = self.core.decode(x, None, positions=positions, prefixes=prefixes)
    elif keep_kv:
      x, kvs = self.core.prefill(x, positions=positions, mask=mask)
    else:
      return self.state_norm(self.core(x, positions=positions, mask=mask))
    return self.state_norm(x), kvs

  def readout(self, state, *, positions, mask) -> jax.Array:
    """s_r -> logits [b, t, vocab], float32 (the coda, a final norm, the
    head)."""
    h = self.head_input(state, positions=positions, mask=mask)
    return precision.float32(self.head(h))

  def head_input(self, state, *, positions, mask) -> jax.Array:
    """s_r -> the head's input [b, t, width] (the coda, a final norm)."""
    return self.norm(self.coda(state, positions=positions, mask=mask))

  def encode(self, tokens) -> jax.Array:
    """tokens [b, t] -> the prelude's e [b, t, width]."""
    length = tokens.shape[1]
    return self.prelude(
      self.embed[...][tokens],
      positions=jnp.arange(length),
      mask=MaskSpec.causal(),
    )

  # ----- Training and teacher-forced inference --------------------------------

  def __call__(self, tokens, key, **depth):
    """tokens [b, t] -> logits [b, t, vocab] (row i predicts token i + 1)
    after `depth` iterations (`features`'s arguments)."""
    return precision.float32(self.head(self.features(tokens, key, **depth)))

  def features(
    self, tokens, key, *, depth, backprop_depth: int = 0, unroll=False
  ):
    """tokens [b, t] -> the head's input [b, t, width] (row i predicts
    token i + 1) after `depth` iterations (an int or a traced scalar) from
    a random state drawn with `key`.

    With `backprop_depth` > 0, only the last min(depth, backprop_depth)
    iterations carry gradients (truncated backpropagation); the earlier ones
    run under stop_gradient. With 0, all `depth` iterations are one scanned,
    differentiable body (`depth` must then be a Python int). `unroll` (a
    Python int `depth`) writes every iteration out instead of looping: the
    same values, for XLA's cost analysis, which counts a loop body once.
    """
    length = tokens.shape[1]
    positions, mask = jnp.arange(length), MaskSpec.causal()
    e = self.encode(tokens)
    state = self.initial_state(key, tokens.shape[0], positions)

    iterate = _loop_body(self, positions, mask)

    def step(state, _=None):
      return iterate(state, e), None

    if not backprop_depth:
      state, _ = jax.lax.scan(step, state, length=int(depth), unroll=unroll)
      return self.head_input(state, positions=positions, mask=mask)

    iterate_frozen = _loop_body(_stop_gradient(self), positions, mask)
    e_frozen = jax.lax.stop_gradient(e)
    maximum = max if unroll else jnp.maximum
    free = maximum(depth - backprop_depth, 0)

    def free_step(_, state):
      return iterate_frozen(state, e_frozen)

    state = jax.lax.fori_loop(0, free, free_step, state, unroll=unroll)
    skipped = maximum(backprop_depth - depth, 0)  # depth < backprop_depth

    def tracked_step(state, k):
      new_state, _ = step(state)
      return jnp.where(k < skipped, state, new_state), None

    state, _ = jax.lax.scan(
      tracked_step, state, jnp.arange(backprop_depth), unroll=unroll
    )
    return self.head_input(state, positions=positions, mask=mask)

  # ----- Generation with caches -----------------------------------------------

  def prefill(self, tokens, key, *, depth: int):
    """tokens [b, t] -> (logits [b, t, vocab], caches) after `depth`
    iterations; caches = (prelude, core [depth]-stacked, coda)."""
    length = tokens.shape[1]
    positions, mask = jnp.arange(length), MaskSpec.causal()
    e, prelude_kvs = self.prelude.prefill(
      self.embed[...][tokens], positions=positions, mask=mask
    )
    state = self.initial_state(key, tokens.shape[0], positions)

    def step(state, _):
      return self.iterate(
        state, e, positions=positions, mask=mask, keep_kv=True
      )

    state, core_kvs = jax.lax.scan(step, state, length=depth)
    h, coda_kvs = self.coda.prefill(state, positions=positions, mask=mask)
    logits = precision.float32(self.head(self.norm(h)))
    return logits, (prelude_kvs, core_kvs, coda_kvs)

  def decode(self, token, position, key, prefixes):
    """token [b, 1] at `position` against the caches' prefixes (prelude,
    core [K]-stacked, coda) -> (logits [b, 1, vocab], the token's keys and
    values in the same structure)."""
    prelude_prefix, core_prefixes, coda_prefix = prefixes
    positions = jnp.reshape(position, (1,))
    e, prelude_kvs = self.prelude.decode(
      self.embed[...][token],
      None,
      positions=positions,
      prefixes=prelude_prefix,
    )
    state = self.initial_state(key, token.shape[0], positions)

    def step(state, prefixes):
      return self.iterate(
        state, e, positions=positions, mask=None, prefixes=prefixes
      )

    state, core_kvs = jax.lax.scan(step, state, core_prefixes)
    h, coda_kvs = self.coda.decode(
      state, None, positions=positions, prefixes=coda_prefix
    )
    logits = precision.float32(self.head(self.norm(h)))
    return logits, (prelude_kvs, core_kvs, coda_kvs)


def make_prelude(spec: RecurrentConfig, rngs) -> dict[str, nnx.Module]:
  """DiffusionBlocks' parts before the block: the prelude (unconditioned,
  on the clean tokens) and the adapter that injects its output."""
  s = spec.layers
  return {
    "prelude": ar.make_layers(s, spec.prelude_layers, rngs, conditioned=False),
    "adapter": llama.linear(2 * s.width, s.width, **s.dtypes(), rngs=rngs),
  }


def _loop_body(model: "RecurrentLM", positions, mask):
  """`(state, e) -> model.iterate(state, e)` for the body of a JAX loop.

  The model is rebuilt inside the body from its split arrays: an nnx
  transform in the core (`nnx.remat`, any `model.remat` but "none") may
  not update a module made outside the loop's trace.
  """
  graphdef, arrays = nnx.split(model)

  def iterate(state, e):
    # tree.map makes new Variables, of this trace (merge alone reuses them).
    inner = nnx.merge(graphdef, jax.tree.map(lambda x: x, arrays))
    return inner.iterate(state, e, positions=positions, mask=mask)

  return iterate


def _stop_gradient(module: nnx.Module) -> nnx.Module:
  """A copy of `module` whose parameters carry no gradient."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def sample_depth(key, mean: float, sigma: float = 0.5) -> jax.Array:
  """Huginn's recurrence depth: tau ~ N(log(mean) - sigma^2 / 2, sigma),
  r = Poisson(e^tau) + 1 (a log-normal Poisson with mean `mean` + 1)."""
  normal_key, poisson_key = jax.random.split(key)
  tau = jnp.log(mean) - sigma**2 / 2 + sigma * jax.random.normal(normal_key)
  return jax.random.poisson(poisson_key, jnp.exp(tau)) + 1


def param_count(spec: RecurrentConfig) -> int:
  """Trainable parameters of `RecurrentLM`; independent of the depth."""
  s = spec.layers
  d, m, v = s.width, s.mlp_dim, s.vocab_size
  layer = 4 * d * d + 3 * d * m + 2 * d
  return s.num_layers * layer + v * d + 2 * d * d + d + d + d * v
