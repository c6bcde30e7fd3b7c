"""The recurrent-depth LM family (method_spec 2.5): config -> experiment.

dblocks: the recurrent block trained as the next-token denoiser in one pass
(`NextTokenDiffusion` on the 2T layout, B=1 over the whole noise range by
default). The prelude runs once on the clean tokens and is injected into
both streams through the adapter; the block's layers are the recurrent
core and the coda, AdaLN-conditioned on sigma; inference is K =
`sampler.num_steps` Euler steps of that one block (one scanned body), so
the K iterations of the recurrence are the K steps of the sampler.

e2e: Huginn's own training (`RecurrentDepthLM`): a depth per step from the
log-normal Poisson (`recurrence.mean_depth`, `recurrence.depth_sigma`),
truncated backpropagation through the last `recurrence.backprop_depth`
iterations, K = `sampler.num_steps` iterations at inference, top-p
generation.

Data, evaluation and samples are the autoregressive family's
(`families.ar`): the same corpora, tokenizer, judge and metrics.
"""

from absl import logging

from dblocks_jax import errors
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import ar as ar_family
from dblocks_jax.families import common
from dblocks_jax.families.base import Experiment
from dblocks_jax.models import ar, recurrent
from dblocks_jax.tasks.recurrent_depth import RecurrentDepthLM


def model_config(config) -> recurrent.RecurrentConfig:
  """`config.model` as the recurrent-depth LM's hyper-parameters."""
  m = config.model
  fields = {
    name: f"model.{name}"
    for name in ("prelude_layers", "recurrent_layers", "coda_layers")
  }
  with errors.config_fields({**fields, "num_layers": "model.num_layers"}):
    return recurrent.RecurrentConfig(
      ar_family.model_config(config),
      prelude_layers=m.prelude_layers,
      recurrent_layers=m.recurrent_layers,
      coda_layers=m.coda_layers,
      state_std=m.state_std,
    )


def inference_depth(config) -> int:
  """K: `sampler.num_steps`, the iterations (Euler steps) of inference."""
  k = int(config.sampler.num_steps)
  if k < 1:
    raise ConfigError(
      f"sampler.num_steps={k}: the recurrence needs at least one iteration"
      " (K >= 1); the paper's K is 32."
    )
  return k


class RecurrentFamily(ar_family.ARFamily):
  """Recurrent-depth language modelling: see the module docstring."""

  # Block-wise, the prelude (a shared part) runs causal beside the block.
  mask_kinds = {"dblocks": ("two_stream", "causal"), "e2e": ("causal",)}

  def build(self, config, *, held_blocks=None) -> Experiment:
    method = common.check_build(config)
    spec = model_config(config)
    logging.info("attention: %s", self.attention_path(config))
    k = inference_depth(config)
    if method == "e2e":
      r, s = config.recurrence, config.sampler
      model = common.end_to_end_model(
        config, lambda rngs: recurrent.RecurrentLM(spec, rngs=rngs)
      )
      fields = {
        "top_p": "sampler.top_p",
        "mean_depth": "recurrence.mean_depth",
        "depth_sigma": "recurrence.depth_sigma",
        "backprop_depth": "recurrence.backprop_depth",
        "inference_depth": "sampler.num_steps",
      }
      with errors.config_fields(fields):
        task = RecurrentDepthLM(
          top_p=s.top_p,
          **common.fields(r, "mean_depth", "depth_sigma", "backprop_depth"),
          inference_depth=k,
          loss_chunk=ar_family.loss_chunk(config),
        )
      return Experiment("e2e", model, task, None)

    block_layers = spec.recurrent_layers + spec.coda_layers
    plan = common.plan_from_config(config, num_layers=block_layers)

    def shell(rngs):
      parts = ar.make_shell(spec.layers, rngs)
      parts.update(recurrent.make_prelude(spec, rngs))
      return parts

    model = common.target_table_model(
      config,
      plan,
      shell=shell,
      targets=lambda trainable, rngs: ar.make_targets(
        spec.layers, trainable=trainable, rngs=rngs
      ),
      layers=lambda n, rngs: ar.make_layers(spec.layers, n, rngs),
      held_blocks=held_blocks,
    )
    return Experiment("dblocks", model, ar_family.diffusion_task(config), plan)

  def inference_steps(self, config, sampler) -> int:
    return inference_depth(config)

  # The evaluation adds the training FLOPs so far, for quality against
  # compute (`families.evaluation.evaluator`, `flops.with_training_flops`).
  reports_training_flops = True

  def describe(self, result) -> str:
    line = super().describe(result)
    return line + f"; {result['train_flops']:.3g} training FLOPs"


FAMILY = RecurrentFamily()
