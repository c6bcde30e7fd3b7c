"""Autoregressive language modelling (method_spec 2.4) as tasks.

DiffusionBlocks (`NextTokenDiffusion`): each next token is denoised in the
space of its L2-normalised embedding, y_i = normalize(E[token_i]),
z_i = y_i + sigma_i eps, conditioned on the clean tokens before it. Training
runs the noisy and the clean sequence as one 2T-token sequence
[noisy_0 .. noisy_{T-1} | clean_0 .. clean_{T-1}] under the block-diffusion
mask at block size 1 (`two_stream_mask`):

  noisy_i attends to itself and to clean_j for j < i;
  clean_i attends to clean_j for j <= i;
  noisy_i and clean_i share the rotary position i.

The loss is w(sigma) x CE(logits at noisy_i, token_i) over i >= 1, with
EDM's weight (the official weighted cross-entropy). Position 0 has no
context and is not a target, as in the baseline.

Decisions the paper leaves open (method_spec 2.4), each documented:
  * sigma per token (default: every noisy token draws its own level in the
    block's range, as Block Diffusion draws one t per block of size 1) or
    per sequence (`sigma_per="sequence"`);
  * clean tokens are NOT sigma-modulated: they carry a learned context
    condition (`models.ar.ContextCondition`), so their keys and values
    are the same at every noise level and generation can cache them;
  * clean tokens enter as c_in(0) y_j = y_j / sigma_data, the normalised
    target rows (the paper's "clean token embeddings z_<i"), so a clean
    token is what a noisy one becomes at sigma = 0;
  * no BOS token is added: position 0 of every window is context only;
  * the vocabulary head is untied from the token table (as the official
    ViT's classifier is from its label table).

Inference (`predict`, `generate`): routed Euler from z ~ N(0, sigma_max^2 I)
over the sampler's grid, the denoised estimate softmax(logits) @ E
(`estimate="soft"`, the official one), the same over the nucleus of mass
`top_p` (`"nucleus"`, our switch: the baseline's top-p truncation applied
to the hand-off, since the soft chain is a sampler of the model's
distribution, tail included), or the row of the argmax (`"hard"`), the
table's normalised rows by default (`normalized_table`); the final
evaluation's argmax is the token. `predict` runs the chain for every
position at once under teacher forcing (next-token accuracy); `generate`
appends tokens one by one, with the clean prefix's keys and values cached
per block. Consecutive steps in one block run as one scanned body.

With `prelude` and `adapter` parts (the recurrent-depth model,
`models.recurrent`), a prelude reads the clean tokens once and both
streams enter the block as adapter([input_i; prelude output at i - 1]).

Baseline (`CausalLM`): plain next-token cross-entropy; generation samples
with top-p (nucleus) sampling.

Shapes: tokens [batch, length] int; logits [batch, length, vocab] with row
i predicting token i from tokens < i (row 0 has no context).
"""

import dataclasses
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dblocks_jax import diffusion
from dblocks_jax.diffusion import edm
from dblocks_jax.nn import chunked_loss, llama
from dblocks_jax.nn.chunked_attention import MaskSpec
from dblocks_jax.tasks.batches import Field

ESTIMATES = ("soft", "hard", "nucleus")
SIGMA_PER = ("token", "sequence")


def two_stream_mask(length: int) -> jax.Array:
  """[1, 1, 2 length, 2 length] bool, True = attend: rows and columns are
  [noisy_0 .. noisy_{T-1} | clean_0 .. clean_{T-1}] (see the module
  docstring). The dense form of `MaskSpec.two_stream(length)`, which the
  denoiser passes."""
  i = jnp.arange(length)[:, None]
  j = jnp.arange(length)[None, :]
  noisy_rows = jnp.concatenate([i == j, j < i], axis=1)
  clean_rows = jnp.concatenate([jnp.zeros_like(i == j), j <= i], axis=1)
  return jnp.concatenate([noisy_rows, clean_rows], axis=0)[None, None]


def noise_condition(parts, sigma: jax.Array) -> jax.Array:
  """sigma [b, t] -> the noisy tokens' condition [b, t, cond_dim]."""
  flat = parts["noise_embed"](edm.c_noise(sigma.reshape(-1)))
  return flat.reshape(sigma.shape + flat.shape[-1:])


def clean_inputs(parts, tokens: jax.Array, sigma_data: float) -> jax.Array:
  """tokens [b, t] -> c_in(0) y = normalize(E[token]) / sigma_data."""
  return parts["targets"](tokens) / sigma_data


def context_features(parts, tokens, sigma_data: float):
  """The prelude's output shifted one place right, [b, T, width]: row i
  reads the tokens before i (zeros at row 0). None without a prelude."""
  if "prelude" not in parts:
    return None
  length = tokens.shape[1]
  e = parts["prelude"](
    clean_inputs(parts, tokens, sigma_data),
    positions=jnp.arange(length),
    mask=MaskSpec.causal(),
  )
  return _shift_right(e)


def _shift_right(x: jax.Array) -> jax.Array:
  """[b, t, d] -> row i holds row i - 1 (zeros at row 0)."""
  return jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0)))


def inject(parts, x: jax.Array, e_before) -> jax.Array:
  """x [b, t, width] -> adapter([x; e_before]) with a prelude (the
  recurrent-depth input injection), x itself without."""
  if e_before is None:
    return x
  return parts["adapter"](jnp.concatenate([x, e_before], -1))


def two_stream_denoise(parts, tokens, z, sigma, *, sigma_data: float):
  """The block's denoiser on the 2T layout: `two_stream_features`, then
  the readout -> (logits [b, T, vocab], D [b, T, width]) at the noisy
  positions."""
  h, noisy_cond = two_stream_features(
    parts, tokens, z, sigma, sigma_data=sigma_data
  )
  return parts["readout"](h, z, sigma, noisy_cond, sigma_data=sigma_data)


def two_stream_features(parts, tokens, z, sigma, *, sigma_data: float):
  """The block's layers on the 2T layout, short of the readout.

  Parts: targets, noise_embed, context, layers, readout (`models.ar`);
  optionally prelude and adapter (`models.recurrent`): then both streams
  enter as adapter([input_i; prelude output at i - 1]).

  Args:
    tokens: [b, T] the clean sequence.
    z: [b, T, width] noisy target embeddings.
    sigma: [b, T] their noise levels.

  Returns:
    the layers' output at the noisy positions [b, T, width] and the noisy
    tokens' condition [b, T, cond_dim] (the readout's).
  """
  length = tokens.shape[1]
  noisy_cond = noise_condition(parts, sigma)
  # The clean tokens share one condition: one modulation row per layer.
  cond = llama.Segments((noisy_cond, parts["context"](1, 1)), (length, length))
  e_before = context_features(parts, tokens, sigma_data)
  noisy = inject(parts, edm.c_in(sigma, sigma_data)[..., None] * z, e_before)
  clean = inject(parts, clean_inputs(parts, tokens, sigma_data), e_before)
  h = jnp.concatenate([noisy, clean], 1)
  positions = jnp.tile(jnp.arange(length), 2)
  h = parts["layers"](
    h,
    cond,
    positions=positions,
    mask=MaskSpec.two_stream(length),
    keep=length,  # The readout reads the noisy tokens only.
  )
  return h, noisy_cond


def _per_token(sigma: jax.Array, tokens: jax.Array) -> jax.Array:
  """sigma [b, T], or [b] one per sequence -> [b, T]."""
  if sigma.ndim == 1:
    sigma = sigma[:, None]
  return jnp.broadcast_to(sigma, tokens.shape)


def _token_fields(vocab_size: int | None) -> dict[str, Field]:
  """Token windows [batch, T] of any length T (rotary positions)."""
  return {
    "tokens": Field(
      "int", rank=1, num_classes=vocab_size, meaning="token ids", varying=(0,)
    )
  }


def _next_token_metrics(logits, targets, ce) -> dict:
  """Training metrics of logits [b, t, vocab] against targets [b, t]."""
  return {
    "ce": jnp.mean(ce),
    "accuracy": jnp.mean(jnp.argmax(logits, -1) == targets),
  }


def chunked_head_loss(head, x, targets, weights, chunk: int):
  """The loss sum(weights x CE(head(x), targets)) over token chunks
  (`nn.chunked_loss`: the logits never held whole) and the training
  metrics of `_next_token_metrics`.

  head: the vocabulary Linear (`nn.linear.Linear`); x: its input [b, t,
  width]; targets [b, t] int; weights [b, t] (no gradient).
  """
  bias = None if head.bias is None else head.bias[...]
  loss, ce, hits = chunked_loss.linear_cross_entropy(
    x.reshape(-1, x.shape[-1]),
    head.kernel[...],
    bias,
    targets.reshape(-1),
    weights.reshape(-1),
    dtype=head.dtype or jnp.float32,
    chunk=chunk,
  )
  return loss, {"ce": jnp.mean(ce), "accuracy": jnp.mean(hits)}


def _check_loss_chunk(loss_chunk: int) -> None:
  if loss_chunk < 0:
    raise ValueError(
      f"loss_chunk={loss_chunk} must be >= 0 (0 = the dense logits)."
    )


def next_token_accuracy(predict, batches: Iterable, key) -> dict:
  """Accuracy of the argmax of `predict(batch, key)` logits [b, T, vocab]
  at positions 1..T-1 of the rows whose `mask` is True."""
  correct, total = 0, 0
  for i, batch in enumerate(batches):
    logits = np.asarray(predict(batch, jax.random.fold_in(key, i)))
    tokens = np.asarray(batch["tokens"])
    mask = np.asarray(batch.get("mask", np.ones(len(tokens), bool)), bool)
    hits = np.argmax(logits[:, 1:], -1) == tokens[:, 1:]
    correct += int(hits[mask].sum())
    total += int(mask.sum()) * (tokens.shape[1] - 1)
  return {"accuracy": correct / max(total, 1), "num_tokens": total}


def _chain(denoise, z, sampler) -> jax.Array:
  """The routed chain from z; `denoise(z, sigma, block) -> (D, logits)`.
  Returns the logits of the final evaluation. Consecutive steps in one
  block run as one scanned body (`diffusion.sample_routed`)."""
  _, logits = diffusion.sample_routed(
    denoise, z, sampler.levels, sampler.blocks, sampler.method
  )
  return logits


def _check_steps(num_tokens: int, prompt_length: int) -> None:
  if num_tokens < 1:
    raise ValueError(f"num_tokens={num_tokens} must be at least 1.")
  if prompt_length < 1:
    raise ValueError("the prompt must hold at least one token.")


# A cache is any structure of per-layer (keys, values) pairs, each [...,
# slots, heads, head_dim] (a recurrent core stacks its iterations in front).
SLOTS = -3


def _is_pair(x) -> bool:
  return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], jax.Array)


def _empty_cache(kvs, total: int):
  """The (keys, values) of a prefill -> caches of `total` slots holding the
  prefill at the front and zeros after."""

  def grow(x):
    pad = [(0, 0)] * x.ndim
    pad[SLOTS] = (0, total - x.shape[SLOTS])
    return jnp.pad(x, pad)

  return jax.tree.map(grow, kvs)


def _write(cache, kvs, position):
  """Writes the new token's (keys, values) [..., 1, h, d] at `position`."""
  return jax.tree.map(
    lambda c, new: jax.lax.dynamic_update_slice_in_dim(
      c, new, position, c.ndim + SLOTS
    ),
    cache,
    kvs,
  )


def _prefixes(cache, position):
  """The cache as attention prefixes (keys, values, valid): slots <
  position are valid."""

  def prefix(pair):
    keys, values = pair
    slots = keys.shape[SLOTS]
    valid = jnp.broadcast_to(jnp.arange(slots) < position, keys.shape[:-2])
    return keys, values, valid

  return jax.tree.map(prefix, cache, is_leaf=_is_pair)


class _NextTokenEvaluation:
  """`evaluate`: next-token accuracy and cross-entropy over held-out
  windows (`next_token_accuracy`), for both language-model tasks."""

  def evaluate(self, predict, batches: Iterable, key) -> dict:
    return next_token_accuracy(predict, batches, key)


@dataclasses.dataclass(frozen=True)
class NextTokenDiffusion(_NextTokenEvaluation):
  """The DiffusionBlocks autoregressive task (a `Task`).

  Batches are {"tokens": [b, T] int}. Parts: see `two_stream_denoise`.

  Attributes:
    sigma_data: EDM sigma_data.
    max_weight: clamp of the EDM weight (0 = none, as the official code).
    sigma_per: "token" or "sequence" (see the module docstring).
    estimate: "soft" (softmax(logits) @ E) or "hard" (the argmax row).
    normalized_table: the estimate uses the normalised rows (the targets).
    top_p: the nucleus mass of `estimate="nucleus"`.
    temperature: scales the chain's starting noise, z ~ N(0, (temperature
      x sigma_max)^2): 1 is the official chain (a sampler of the model's
      distribution, since the probability-flow ODE maps noise to samples);
      lower values sharpen it (reduced-temperature sampling), 0 makes it
      deterministic.
    loss_chunk: tokens per chunk of the training loss's readout and
      cross-entropy (`chunked_head_loss`: the [b, T, vocab] logits never
      held whole); 0 = the dense logits.
  """

  sigma_data: float = 0.5
  max_weight: float = 0.0
  sigma_per: str = "token"
  estimate: str = "soft"
  normalized_table: bool = True
  top_p: float = 0.95
  temperature: float = 1.0
  loss_chunk: int = 0

  def __post_init__(self):
    _check_top_p(self.top_p)
    _check_loss_chunk(self.loss_chunk)
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0.")
    if self.sigma_per not in SIGMA_PER:
      raise ValueError(
        f"sigma_per={self.sigma_per!r} is unknown; choose one of {SIGMA_PER}."
      )
    if self.estimate not in ESTIMATES:
      raise ValueError(
        f"estimate={self.estimate!r} is unknown; choose one of {ESTIMATES}."
      )

  def level_shape(self, batch) -> tuple[int, ...]:
    """[b, T] levels per token, or [b] per sequence."""
    shape = batch["tokens"].shape
    return tuple(shape) if self.sigma_per == "token" else shape[:1]

  def denoise(self, parts, tokens, z, sigma):
    """sigma: [b, T] or [b] (one per sequence) -> (logits, D)."""
    return two_stream_denoise(
      parts, tokens, z, _per_token(sigma, tokens), sigma_data=self.sigma_data
    )

  def batch_fields(self, parts, example) -> dict[str, Field]:
    """Tokens [batch, T]: ids below the target table's rows."""
    del example
    return _token_fields(parts["targets"].table.shape[0])

  def loss(self, parts, batch, level, key, *, train: bool = True):
    """batch: tokens [b, T]; level: sigma [b, T] or [b]."""
    del train
    tokens = batch["tokens"]
    y = parts["targets"](tokens)
    sigma = _per_token(level, tokens)
    z = y + sigma[..., None] * jax.random.normal(key, y.shape)
    weight = diffusion.loss_weight(sigma, self.sigma_data, self.max_weight)
    if self.loss_chunk:
      h, cond = two_stream_features(
        parts, tokens, z, sigma, sigma_data=self.sigma_data
      )
      x, _ = parts["readout"].head_input(
        h, z, sigma, cond, sigma_data=self.sigma_data
      )
      weight = weight[:, 1:] / weight[:, 1:].size  # The mean's.
      return chunked_head_loss(
        parts["readout"].head, x[:, 1:], tokens[:, 1:], weight, self.loss_chunk
      )
    logits, _ = self.denoise(parts, tokens, z, sigma)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
    ce, weight = ce[:, 1:], weight[:, 1:]
    metrics = _next_token_metrics(logits[:, 1:], tokens[:, 1:], ce)
    return jnp.mean(weight * ce), metrics

  def _start(self, sampler) -> float:
    """The starting noise level: temperature x the grid's first level."""
    return self.temperature * float(sampler.levels[0])

  def _estimate(self, parts, logits):
    table = parts["targets"]
    table = table.normalized() if self.normalized_table else table.table[...]
    if self.estimate == "hard":
      return table[jnp.argmax(logits, -1)]
    if self.estimate == "nucleus":
      logits = nucleus(logits, self.top_p)
    return jax.nn.softmax(logits, -1) @ table

  def predict(self, parts_for_block, batch, key, *, sampler):
    """Teacher-forced routed chains at every position at once -> logits
    [b, T, vocab] of the final evaluation (row i: token i given < i)."""
    if sampler is None:
      raise ValueError(
        "NextTokenDiffusion needs a sampler (the routed grid); pass"
        " sampler=Sampler.of(plan)."
      )
    tokens = batch["tokens"]
    width = parts_for_block(int(sampler.blocks[0]))["targets"].table.shape[-1]
    z = self._start(sampler) * jax.random.normal(key, tokens.shape + (width,))

    def denoise(z, sigma, block):
      parts = parts_for_block(block)
      logits, _ = self.denoise(parts, tokens, z, jnp.full(tokens.shape, sigma))
      return self._estimate(parts, logits), logits

    return _chain(denoise, z, sampler)

  def generate(
    self,
    parts_for_block: Callable,
    prompt: jax.Array,
    key: jax.Array,
    *,
    sampler,
    num_tokens: int,
    use_cache: bool = True,
  ) -> jax.Array:
    """Greedy continuation of `prompt` [b, P] by `num_tokens` tokens ->
    [b, P + num_tokens]. Token p's chain starts from z ~ N(0, sigma_max^2)
    drawn with fold_in(key, p). With `use_cache`, every block keeps the
    clean prefix's keys and values (each new token costs O(length));
    without, every evaluation runs the 2T layout over the whole window."""
    batch, prompt_length = prompt.shape
    _check_steps(num_tokens, prompt_length)
    total = prompt_length + num_tokens
    tokens = jnp.pad(prompt, ((0, 0), (0, num_tokens)))
    width = parts_for_block(int(sampler.blocks[0]))["targets"].table.shape[-1]
    used = sorted({int(b) for b in sampler.blocks})

    def noise_at(position):
      draw = jax.random.normal(
        jax.random.fold_in(key, position), (batch, width)
      )
      return self._start(sampler) * draw[:, None]

    if not use_cache:

      def next_token(position, tokens):
        def denoise(z, sigma, block):
          parts = parts_for_block(block)
          window = jnp.zeros((batch, total, width)).at[:, position].set(z[:, 0])
          logits, _ = self.denoise(
            parts, tokens, window, jnp.full((batch, total), sigma)
          )
          logits = jax.lax.dynamic_slice_in_dim(logits, position, 1, 1)
          return self._estimate(parts, logits), logits

        logits = _chain(denoise, noise_at(position), sampler)
        token = jnp.argmax(logits[:, 0], -1).astype(tokens.dtype)
        return tokens.at[:, position].set(token)

      return jax.lax.fori_loop(prompt_length, total, next_token, tokens)

    # The prelude (when there is one) is shared: it runs once per token.
    shared = parts_for_block(used[0])
    prelude, before = _PreludeCache.prefill(
      shared, prompt, total, self.sigma_data
    )
    caches = {}
    for b in used:
      parts = parts_for_block(b)
      _, kvs = parts["layers"].prefill(
        inject(parts, clean_inputs(parts, prompt, self.sigma_data), before),
        parts["context"](batch, prompt_length),
        positions=jnp.arange(prompt_length),
        mask=MaskSpec.causal(),
      )
      caches[b] = _empty_cache(kvs, total)

    def next_token(position, carry):
      tokens, caches, prelude = carry
      positions = jnp.reshape(position, (1,))

      def denoise(z, sigma, block):
        parts = parts_for_block(block)
        sigma = jnp.full((batch, 1), sigma)
        cond = noise_condition(parts, sigma)
        noisy = edm.c_in(sigma, self.sigma_data)[..., None] * z
        h, _ = parts["layers"].decode(
          inject(parts, noisy, prelude.last),
          cond,
          positions=positions,
          prefixes=_prefixes(caches[block], position),
        )
        logits, _ = parts["readout"](
          h, z, sigma, cond, sigma_data=self.sigma_data
        )
        return self._estimate(parts, logits), logits

      logits = _chain(denoise, noise_at(position), sampler)
      token = jnp.argmax(logits, -1).astype(tokens.dtype)  # [b, 1]
      new_caches = {}
      for b in used:
        parts = parts_for_block(b)
        clean = clean_inputs(parts, token, self.sigma_data)
        _, kvs = parts["layers"].decode(
          inject(parts, clean, prelude.last),
          parts["context"](batch, 1),
          positions=positions,
          prefixes=_prefixes(caches[b], position),
        )
        new_caches[b] = _write(caches[b], kvs, position)
      prelude = prelude.append(shared, token, position, self.sigma_data)
      return tokens.at[:, position].set(token[:, 0]), new_caches, prelude

    tokens, _, _ = jax.lax.fori_loop(
      prompt_length, total, next_token, (tokens, caches, prelude)
    )
    return tokens


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _PreludeCache:
  """The prelude's state during cached generation (all None without one).

  Attributes:
    cache: the prelude's (keys, values) per layer.
    last: [b, 1, width] its output at the last token so far (the next
      token's injection).
  """

  cache: list | None
  last: jax.Array | None

  @classmethod
  def prefill(cls, parts, prompt, total: int, sigma_data: float):
    """-> (the state after the prompt, the prompt's injection [b, P,
    width]: the prelude's outputs shifted right)."""
    if "prelude" not in parts:
      return cls(None, None), None
    length = prompt.shape[1]
    e, kvs = parts["prelude"].prefill(
      clean_inputs(parts, prompt, sigma_data),
      positions=jnp.arange(length),
      mask=MaskSpec.causal(),
    )
    return cls(_empty_cache(kvs, total), e[:, -1:]), _shift_right(e)

  def append(self, parts, token, position, sigma_data: float):
    """Runs the prelude on token [b, 1] at `position`."""
    if self.cache is None:
      return self
    e, kvs = parts["prelude"].decode(
      clean_inputs(parts, token, sigma_data),
      None,
      positions=jnp.reshape(position, (1,)),
      prefixes=_prefixes(self.cache, position),
    )
    return _PreludeCache(_write(self.cache, kvs, position), e)


def _check_top_p(top_p: float) -> None:
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p} must lie in (0, 1].")


def nucleus(logits: jax.Array, top_p: float) -> jax.Array:
  """logits [..., vocab] with every token outside the nucleus at -inf: the
  nucleus is the smallest set of the most likely tokens whose probability
  reaches `top_p` (1 keeps all)."""
  _check_top_p(top_p)
  descending = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(descending, -1)
  before = jnp.cumsum(probs, -1) - probs  # Mass of the more likely tokens.
  kept = jnp.where(before < top_p, descending, jnp.inf)
  threshold = jnp.min(kept, -1, keepdims=True)  # The least likely kept.
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def top_p_sample(key, logits: jax.Array, top_p: float) -> jax.Array:
  """A draw from the nucleus of mass `top_p` (nucleus sampling; 1 = plain
  sampling). logits [b, vocab] -> [b] int."""
  return jax.random.categorical(key, nucleus(logits, top_p), axis=-1)


@dataclasses.dataclass(frozen=True)
class CausalLM(_NextTokenEvaluation):
  """The autoregressive baseline (a `Task`): part "model" is a
  `models.ar.LlamaLM`, trained without noise (`level` is None).

  Attributes:
    top_p: nucleus mass of `generate` (0.95 as the paper's baseline).
    loss_chunk: tokens per chunk of the training loss's head and
      cross-entropy (`chunked_head_loss`); 0 = the dense logits.
  """

  top_p: float = 0.95
  loss_chunk: int = 0

  def __post_init__(self):
    _check_top_p(self.top_p)
    _check_loss_chunk(self.loss_chunk)

  def batch_fields(self, parts, example) -> dict[str, Field]:
    """Tokens [batch, T]: ids below the width of the model's logits (read
    off its output shape; nothing runs)."""
    vocab_size = None
    if "tokens" in example:
      logits = jax.eval_shape(
        lambda tokens: self.forward(parts["model"], tokens, jax.random.key(0)),
        example["tokens"],
      )
      vocab_size = int(logits.shape[-1])
    return _token_fields(vocab_size)

  def loss(self, parts, batch, level, key, *, train: bool = True):
    del level, key, train
    tokens = batch["tokens"]
    model = parts["model"]
    if self.loss_chunk:
      return self.chunked_loss(model, model.features(tokens), tokens)
    logits = model(tokens)[:, :-1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.mean(ce), _next_token_metrics(logits, tokens[:, 1:], ce)

  def chunked_loss(self, model, features, tokens):
    """The mean next-token CE of the head's input `features` [b, t, width]
    (row i predicting token i + 1), over chunks (`chunked_head_loss`)."""
    targets = tokens[:, 1:]
    weights = jnp.full(targets.shape, 1 / targets.size)
    return chunked_head_loss(
      model.head, features[:, :-1], targets, weights, self.loss_chunk
    )

  def predict(self, parts_for_block, batch, key, *, sampler=None):
    """logits [b, T, vocab], row i predicting token i (row 0 zeros)."""
    del sampler
    logits = self.forward(parts_for_block(0)["model"], batch["tokens"], key)
    return _shift_right(logits)

  def generate(
    self,
    parts_for_block: Callable,
    prompt: jax.Array,
    key: jax.Array,
    *,
    num_tokens: int,
    use_cache: bool = True,
    sampler=None,
  ) -> jax.Array:
    """Top-p continuation of `prompt` [b, P] -> [b, P + num_tokens]; token
    p is drawn with fold_in(draw_key, p), where draw_key, model_key =
    split(key) and model_key goes to the model (random states)."""
    del sampler
    model = parts_for_block(0)["model"]
    batch, prompt_length = prompt.shape
    _check_steps(num_tokens, prompt_length)
    total = prompt_length + num_tokens
    tokens = jnp.pad(prompt, ((0, 0), (0, num_tokens)))
    draw_key, model_key = jax.random.split(key)

    def draw(position, logits):
      key_p = jax.random.fold_in(draw_key, position)
      return top_p_sample(key_p, logits, self.top_p).astype(tokens.dtype)

    if not use_cache:

      def next_token(position, tokens):
        logits = self.forward(model, tokens, model_key)
        last = jax.lax.dynamic_index_in_dim(logits, position - 1, 1, False)
        return tokens.at[:, position].set(draw(position, last))

      return jax.lax.fori_loop(prompt_length, total, next_token, tokens)

    logits, kvs = self.prefill(model, prompt, model_key)
    cache = _empty_cache(kvs, total)
    tokens = tokens.at[:, prompt_length].set(draw(prompt_length, logits[:, -1]))

    def next_token(position, carry):
      tokens, cache = carry
      previous = jax.lax.dynamic_slice_in_dim(tokens, position - 1, 1, 1)
      logits, kvs = self.decode(
        model, previous, position - 1, model_key, _prefixes(cache, position - 1)
      )
      cache = _write(cache, kvs, position - 1)
      return tokens.at[:, position].set(draw(position, logits[:, 0])), cache

    tokens, _ = jax.lax.fori_loop(
      prompt_length + 1, total, next_token, (tokens, cache)
    )
    return tokens

  # The model's passes; a subclass with another model overrides these.

  def forward(self, model, tokens, key) -> jax.Array:
    """tokens [b, t] -> logits [b, t, vocab], row i predicting token i + 1."""
    del key
    return model(tokens)

  def prefill(self, model, tokens, key):
    """-> (logits [b, t, vocab], the cache's (keys, values))."""
    del key
    return model.prefill(tokens)

  def decode(self, model, token, position, key, prefixes):
    """token [b, 1] -> (logits [b, 1, vocab], its (keys, values))."""
    del key
    return model.decode(token, position, prefixes)
