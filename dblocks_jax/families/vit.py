"""The ViT classification family (method_spec 2.1): config -> experiment.

dblocks: the official DiffusionBlocks ViT (`models.vit`) split into blocks,
trained by `DiffusionClassification`; the label table is trained with the
shared stem and readout (`shared`) or fixed from its own seed
(`independent`). e2e: the plain ViT classifier of the same size trained
with cross-entropy (`EndToEndClassification`, no noise). Evaluation is the
test accuracy of routed sampling (`sampler.*`).
"""

from absl import logging

from dblocks_jax import errors
from dblocks_jax.families import common
from dblocks_jax.families.base import Experiment
from dblocks_jax.models import vit
from dblocks_jax.nn import attention
from dblocks_jax.tasks.classification import (
  DiffusionClassification,
  EndToEndClassification,
)

# The attention's arguments -> their config fields, for the errors.
ATTENTION_FIELDS = {
  "attention_impl": "model.attention_impl",
  "attention_dropout": "model.attention_dropout",
}


def model_config(config) -> vit.ViTConfig:
  """`config.model` as the ViT's explicit hyper-parameters; the chunked
  attention with attention dropout is a ConfigError naming both fields."""
  common.check_choice(
    config.model.attention_impl,
    attention.ATTENTION_IMPLS,
    "model.attention_impl",
  )
  with errors.config_fields({**errors.CONFIG_FIELDS, **ATTENTION_FIELDS}):
    return common.model_spec(
      vit.ViTConfig,
      config,
      *("num_layers", "width", "num_heads", "mlp_dim", "patch_size"),
      *("cond_dim", "frequency_dim", "dropout", "attention_dropout"),
      *("layer_norm_eps", "modulation", "readout_token", "attention_impl"),
    )


class ViTFamily(common.ImageData):
  """ViT classification: see the module docstring."""

  def attention_path(self, config) -> str:
    """The attention path of `config`'s training step (`model.attention_impl`
    resolved on this platform), e.g. "dense (auto on cpu, attention
    dropout)"."""
    return model_config(config).describe_attention()

  def build(self, config, *, held_blocks=None) -> Experiment:
    method = common.check_build(config)
    spec = model_config(config)
    logging.info("attention: %s", spec.describe_attention())
    image_shape, num_classes = common.image_classes(config)
    if method == "e2e":
      model = common.end_to_end_model(
        config,
        lambda rngs: vit.BaselineViT(spec, image_shape, num_classes, rngs=rngs),
      )
      return Experiment("e2e", model, EndToEndClassification(), None)

    plan = common.plan_from_config(config)
    model = common.target_table_model(
      config,
      plan,
      shell=lambda rngs: vit.make_shell(spec, image_shape, num_classes, rngs),
      targets=lambda trainable, rngs: vit.make_targets(
        spec, num_classes, trainable=trainable, rngs=rngs
      ),
      layers=lambda n, rngs: vit.make_layers(spec, n, rngs),
      held_blocks=held_blocks,
    )
    d, s = config.diffusion, config.sampler
    with errors.config_fields():
      task = DiffusionClassification(
        denoise=vit.denoise,
        sigma_data=d.sigma_data,
        max_weight=d.max_weight,
        image_dropout=config.model.image_dropout,
        normalized_table=s.normalized_table,
        estimate=s.estimate,
        guidance_scale=s.guidance_scale,
      )
    return Experiment("dblocks", model, task, plan)

  def evaluator(self, config, experiment, workdir):
    """Test accuracy with the config's sampler."""
    from dblocks_jax import data

    common.check_image_data(config)
    sampler = common.sampler_from_config(config, experiment.plan)
    options = common.data_options(config)

    def evaluate(trainer) -> dict:
      batches = data.make_eval_batches(
        options, batch_size=config.eval_batch_size
      )
      result = trainer.evaluate(batches, sampler=sampler)
      result["inference_steps"] = sampler.num_steps if sampler else 1
      return result

    return evaluate

  def describe(self, result) -> str:
    return (
      f"accuracy: {result['accuracy']:.4f} ({result['method']}, step"
      f" {result['step']}, {result['num_examples']} test examples,"
      f" {result['inference_steps']} inference steps)"
    )


FAMILY = ViTFamily()
