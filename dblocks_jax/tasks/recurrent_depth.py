"""The recurrent-depth baseline (method_spec 2.5): Huginn's own training.

Every step draws a recurrence depth r from Huginn's log-normal Poisson
(mean `mean_depth` + 1, `models.recurrent.sample_depth`) and backpropagates
through the last `backprop_depth` iterations only (truncated
backpropagation through depth); the loss is next-token cross-entropy.
Inference runs `inference_depth` iterations (K, one scanned body), and
generation samples with top-p as the autoregressive baseline does, with a
key/value cache per iteration.

Shapes as `tasks.autoregressive`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from dblocks_jax.models import recurrent
from dblocks_jax.nn import precision
from dblocks_jax.tasks.autoregressive import CausalLM, _next_token_metrics
from dblocks_jax.tasks.base import StepDepth


@dataclasses.dataclass(frozen=True)
class RecurrentDepthLM(CausalLM):
  """Huginn's training as a `Task`: part "model" is a
  `models.recurrent.RecurrentLM`, trained without noise (`level` is None).

  Attributes:
    top_p: nucleus mass of `generate`.
    loss_chunk: tokens per chunk of the training loss's head and
      cross-entropy (`CausalLM.chunked_loss`); 0 = the dense logits.
    mean_depth: the mean of the training depth's log-normal Poisson.
    depth_sigma: its log-normal spread (Huginn's 0.5).
    backprop_depth: iterations that carry gradients (the truncation).
    inference_depth: K, the iterations of evaluation and generation.
    fixed_depth: > 0: every step runs this depth, every iteration written
      out (no loop), instead of a draw: for counting FLOPs with XLA's cost
      analysis, which counts a loop body once (`dblocks_jax.families.flops`).
  """

  mean_depth: float = 32.0
  depth_sigma: float = 0.5
  backprop_depth: int = 8
  inference_depth: int = 32
  fixed_depth: int = 0

  def __post_init__(self):
    super().__post_init__()
    if self.inference_depth < 1:
      raise ValueError(
        f"inference_depth={self.inference_depth} must be at least 1."
      )
    if not 1 <= self.backprop_depth <= self.mean_depth:
      raise ValueError(
        f"backprop_depth={self.backprop_depth} must lie in [1, mean_depth="
        f"{self.mean_depth:g}]: the truncation cannot exceed the mean depth."
      )

  def step_depth(self) -> StepDepth:
    """The drawn depth of a training step, for counting its FLOPs."""
    return StepDepth(
      backprop=self.backprop_depth,
      draw=lambda key: recurrent.sample_depth(
        key, self.mean_depth, self.depth_sigma
      ),
      fixed=lambda depth: dataclasses.replace(self, fixed_depth=depth),
    )

  def loss(self, parts, batch, level, key, *, train: bool = True):
    del level, train
    tokens = batch["tokens"]
    depth_key, state_key = jax.random.split(key)
    if self.fixed_depth:
      depth, unroll = self.fixed_depth, True
    else:
      depth = recurrent.sample_depth(
        depth_key, self.mean_depth, self.depth_sigma
      )
      unroll = False
    model = parts["model"]
    features = model.features(
      tokens,
      state_key,
      depth=depth,
      backprop_depth=self.backprop_depth,
      unroll=unroll,
    )
    if self.loss_chunk:
      loss, metrics = self.chunked_loss(model, features, tokens)
    else:
      logits = precision.float32(model.head(features))[:, :-1]
      ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, tokens[:, 1:]
      )
      loss, metrics = (
        jnp.mean(ce),
        _next_token_metrics(logits, tokens[:, 1:], ce),
      )
    metrics["depth"] = jnp.asarray(depth, jnp.float32)
    return loss, metrics

  def forward(self, model, tokens, key):
    return model(tokens, key, depth=self.inference_depth)

  def prefill(self, model, tokens, key):
    return model.prefill(tokens, key, depth=self.inference_depth)

  def decode(self, model, token, position, key, prefixes):
    return model.decode(token, position, key, prefixes)
