"""The ViT classification family (method_spec 2.1): config -> experiment.

dblocks: the official DiffusionBlocks ViT (`models.vit`) split into blocks,
trained by `DiffusionClassification`; the label table is trained with the
shared stem and readout (`shared`) or fixed from its own seed
(`independent`). e2e: the plain ViT classifier of the same size trained
with cross-entropy (`EndToEndClassification`, no noise). Evaluation is the
test accuracy of routed sampling (`sampler.*`).
"""

from dblocks_jax import errors
from dblocks_jax.families import common
from dblocks_jax.families.base import Experiment
from dblocks_jax.models import vit
from dblocks_jax.tasks.classification import (
  DiffusionClassification,
  EndToEndClassification,
)


def model_config(config) -> vit.ViTConfig:
  """`config.model` as the ViT's explicit hyper-parameters."""
  m = config.model
  with errors.config_fields():
    return vit.ViTConfig(
      num_layers=m.num_layers,
      width=m.width,
      num_heads=m.num_heads,
      mlp_dim=m.mlp_dim,
      patch_size=m.patch_size,
      cond_dim=m.cond_dim,
      frequency_dim=m.frequency_dim,
      dropout=m.dropout,
      attention_dropout=m.attention_dropout,
      layer_norm_eps=m.layer_norm_eps,
      modulation=m.modulation,
      readout_token=m.readout_token,
      remat=common.model_remat(config),
      **common.model_dtypes(config),
    )


class ViTFamily:
  """ViT classification: see the module docstring."""

  def build(self, config, *, held_blocks=None) -> Experiment:
    from flax import nnx

    method = common.check_method(config)
    common.check_parallel(config)
    spec = model_config(config)
    image_shape = tuple(config.data.image_shape)
    num_classes = config.data.num_classes
    if method == "e2e":
      network = vit.BaselineViT(
        spec, image_shape, num_classes, rngs=nnx.Rngs(params=config.seed)
      )
      model = common.BlockwiseModel.end_to_end({"model": network})
      return Experiment("e2e", model, EndToEndClassification(), None)

    plan = common.plan_from_config(config)
    shared_mode = config.blocks.sharing == "shared"

    def shell(rngs):
      parts = vit.make_shell(spec, image_shape, num_classes, rngs)
      if shared_mode:
        parts["targets"] = vit.make_targets(
          spec, num_classes, trainable=True, rngs=rngs
        )
      return parts

    def fixed(rngs):
      targets = vit.make_targets(spec, num_classes, trainable=False, rngs=rngs)
      return {"targets": targets}

    model = common.blockwise_model(
      config,
      plan,
      shell=shell,
      layers=lambda n, rngs: vit.make_layers(spec, n, rngs),
      fixed=None if shared_mode else fixed,
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

  def train_data(self, config, specs) -> dict:
    common.check_image_data(config)
    return common.image_train_data(config, specs)

  def batch_spec(self, config) -> dict:
    return common.image_batch_spec(config)

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
