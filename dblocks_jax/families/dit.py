"""The DiT generation family (method_spec 2.2): config -> experiment.

dblocks: the reference DiT (`models.dit`) split into blocks, trained as EDM
denoisers of their noise ranges (`DiffusionGeneration`). e2e: the same DiT
trained as one block over the whole range (the same task, B = 1).
Evaluation samples `eval.num_samples` images with the routed sampler and,
with a feature network, measures the FID against the reference images.
"""

import os

from absl import logging

from dblocks_jax import errors
from dblocks_jax.families import common
from dblocks_jax.families.base import Experiment
from dblocks_jax.models import dit
from dblocks_jax.nn.attention import ATTENTION_IMPLS, ATTENTION_KINDS
from dblocks_jax.tasks.base import Sampler
from dblocks_jax.tasks.generation import DiffusionGeneration


def model_config(config) -> dit.DiTConfig:
  """`config.model` as DiT's explicit hyper-parameters."""
  m = config.model
  attention = m.get("attention", "einsum")
  common.check_choice(attention, ATTENTION_KINDS, "model.attention")
  common.check_choice(m.attention_impl, ATTENTION_IMPLS, "model.attention_impl")
  return common.model_spec(
    dit.DiTConfig,
    config,
    *("num_layers", "width", "num_heads", "patch_size", "mlp_ratio"),
    *("frequency_dim", "learn_sigma"),
    null_class=m.label_dropout > 0,
    attention=attention,
    attention_impl=m.attention_impl,
  )


class DiTFamily(common.ImageData):
  """DiT generation: see the module docstring."""

  def attention_path(self, config) -> str:
    """The attention path of `config`'s training step (`model.attention_impl`
    resolved on this platform), e.g. "chunked (auto on cpu)"."""
    return model_config(config).describe_attention()

  def build(self, config, *, held_blocks=None) -> Experiment:
    method = common.check_build(config)
    spec = model_config(config)
    logging.info("attention: %s", spec.describe_attention())
    image_shape, num_classes = common.image_classes(config)
    blockwise = method == "dblocks"
    plan = common.plan_from_config(config, single_block=not blockwise)
    if not blockwise:
      config = _shared(config)
    model = common.blockwise_model(
      config,
      plan,
      shell=lambda rngs: dit.make_shell(spec, image_shape, num_classes, rngs),
      layers=lambda n, rngs: dit.make_layers(spec, n, rngs),
      held_blocks=held_blocks,
    )
    d = config.diffusion
    with errors.config_fields():
      task = DiffusionGeneration(
        num_classes=num_classes,
        sample_shape=image_shape,
        sigma_data=d.sigma_data,
        max_weight=d.max_weight,
        label_dropout=config.model.label_dropout,
        guidance_scale=config.sampler.guidance_scale,
      )
    return Experiment(method, model, task, plan)

  def evaluator(self, config, experiment, workdir):
    """Samples and (with a feature network) their FID: a
    `generation.SampleEvaluator` (`evaluation.sample_evaluator`), which
    checks the weight files and the reference now and loads Inception and
    the VAE at the first evaluation."""
    from dblocks_jax.families import evaluation

    common.check_image_data(config)
    sampler = common.sampler_from_config(config, experiment.plan)
    cache_dir = config.eval.reference_cache_dir or os.path.join(
      workdir, "fid_reference"
    )
    return evaluation.sample_evaluator(
      config,
      lambda trainer: sample_fn(trainer, sampler),
      inference_steps=sampler.num_steps,
      cache_dir=cache_dir,
    )

  def write_samples(self, config, experiment, trainer, workdir) -> dict:
    """`--mode=sample`: `samples/step_<N>.png` (a grid, one column per
    class by default) and `samples/step_<N>.npz` (`images` uint8 [n, H, W,
    C], `labels` [n], and the sampler settings); latents are decoded by the
    SD VAE, as in the FID evaluation."""
    import jax
    import numpy as np

    from dblocks_jax import evaluate
    from dblocks_jax.families import evaluation

    sampler = common.sampler_from_config(config, experiment.plan)
    s = config.sample
    labels = (
      np.asarray(s.labels, np.int32)
      if len(s.labels)
      else evaluate.generation.class_labels(
        s.num_samples, config.data.num_classes
      )
    )
    images = evaluate.generate(
      sample_fn(trainer, sampler),
      labels,
      jax.random.key(s.seed),
      batch_size=min(config.eval_batch_size, len(labels)),
    )
    to_pixels = evaluation.sample_pixels(config)
    pixels = to_pixels(images, config.eval_batch_size)
    step = trainer.step_count
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"step_{step}")
    settings = {
      "inference_steps": int(sampler.num_steps),
      "sampler": sampler.method,
      "guidance_scale": float(config.sampler.guidance_scale),
      "seed": int(s.seed),
    }
    np.savez(stem + ".npz", images=pixels, labels=labels, **settings)
    columns = s.columns or min(len(labels), config.data.num_classes)
    evaluate.generation.save_png(
      evaluate.image_grid(pixels, columns), stem + ".png"
    )
    return {
      "png": stem + ".png",
      "npz": stem + ".npz",
      "num_samples": int(len(labels)),
      "step": step,
      **settings,
    }

  def describe_samples(self, result) -> str:
    return (
      f"samples: {result['num_samples']} at step {result['step']}"
      f" ({result['inference_steps']} {result['sampler']} steps, guidance"
      f" {result['guidance_scale']}); wrote {result['png']} and"
      f" {result['npz']}"
    )

  def describe(self, result) -> str:
    where = f"{result['method']}, step {result['step']}"
    line = (
      f"{result['num_samples']} samples, {result['inference_steps']}"
      f" {result['sampler']} steps, guidance {result['guidance_scale']}"
    )
    if "fid" in result:
      return (
        f"fid: {result['fid']:.3f} ({where}, {line},"
        f" {result['feature_network']} features vs {result['split']} split)"
      )
    return f"sampled ({where}, {line}; eval.feature_network='none': no FID)"


def sample_fn(trainer, sampler: Sampler):
  """`sample(labels [b], key) -> [b, H, W, C]` of a trainer's model."""
  predict = trainer.predict_fn(sampler)
  arrays = trainer.arrays()
  return lambda labels, key: predict(arrays, {"label": labels}, key)


def _shared(config):
  """The baseline's config: one network, every part shared."""
  import copy

  single = copy.deepcopy(config)
  with single.unlocked():
    single.blocks.sharing = "shared"
  return single


FAMILY = DiTFamily()
