"""The evaluation's config wiring: a config -> the explicit pieces of
`dblocks_jax.evaluate`, which reads no config.

  feature_network(config)         `eval.feature_network`: Inception, the
                                  features of a trained classifier, or None
  classifier_features(workdir)    those of an end-to-end image classifier
  sample_pixels(config)           samples -> uint8 pixels (latents decoded
                                  by the VAE of `encode.*`)
  reference_images(config)        `eval.reference_data`, `eval.reference_split`
  sample_evaluator(config, ...)   a generator's samples and their FID
  load_judge(workdir, ...)        the LM judge of generated text
  evaluator(family, config, ...)  the family's evaluator (with the training
                                  FLOPs where the family reports them)
"""

import os

import jax
import jax.numpy as jnp

from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.data import latents as latents_lib
from dblocks_jax.data.info import normalisation
from dblocks_jax.data.options import DataOptions
from dblocks_jax.errors import ConfigError
from dblocks_jax.evaluate import features, generation, judge, pixels, reference
from dblocks_jax.models.pretrained import inception_weights
from dblocks_jax.models.pretrained import vae as vae_lib

REFERENCE_DATA = ("", "data", "encode")
JUDGE_TOKENIZER_FILE = "tokenizer.model"


def evaluator(family, config, experiment, workdir: str):
  """`evaluate(trainer) -> eval.json fields`: the family's evaluator, plus
  `step_flops` and `train_flops` (`flops.with_training_flops`) for a family
  whose `reports_training_flops` is true (the recurrent-depth LMs)."""
  evaluate = family.evaluator(config, experiment, workdir)
  if getattr(family, "reports_training_flops", False):
    from dblocks_jax.families import flops

    evaluate = flops.with_training_flops(evaluate, config)
  return evaluate


# ----- Samples -> pixels --------------------------------------------------


def vae_config(config) -> vae_lib.VAEConfig:
  """`encode.vae` as the SD VAE's architecture."""
  v = config.encode.vae
  return vae_lib.VAEConfig(
    in_channels=3,
    out_channels=3,
    latent_channels=int(v.latent_channels),
    block_out_channels=tuple(int(c) for c in v.block_out_channels),
    layers_per_block=int(v.layers_per_block),
    norm_num_groups=int(v.norm_num_groups),
    scaling_factor=float(v.scaling_factor),
  )


def is_latent(config) -> bool:
  return config.data.name == "latents"


def pixel_shape(config) -> tuple[int, ...]:
  """[H, W, C] of a sample's pixels, reading no data: `data.image_shape`,
  or for latents [h, w, c] the decoded [h f, w f, 3] (f the downsampling
  factor of the VAE of `encode.vae`)."""
  factor = vae_config(config).downsample_factor if is_latent(config) else 0
  return pixels.pixel_shape(config.data.image_shape, factor)


def sample_pixels(config) -> pixels.SamplePixels:
  """Samples -> uint8 pixels: the inverse of the data normalisation, or for
  latents the SD VAE's decoder (`encode.vae_weights`, or the weights
  recorded in the latent dataset's meta.json when that is empty; checked
  now, loaded at the first call)."""
  shape = pixel_shape(config)
  if not is_latent(config):
    mean, std = normalisation(DataOptions.from_mapping(config.data))
    return pixels.SamplePixels(shape, mean, std)
  meta = latents_lib.read_meta(config.data.dir)
  decoder = pixels.LatentDecoder(
    config.encode.vae_weights or meta["vae"]["weights"],
    vae_config(config),
    meta["scaling_factor"],
  )
  return pixels.SamplePixels(
    shape, pixels.DECODED_MEAN, pixels.DECODED_STD, decoder
  )


# ----- Feature networks -----------------------------------------------------


def feature_network(config):
  """The feature network of `config.eval`, or None for "none".

  Its input is the samples' pixels: decoded images for latent datasets.
  """
  name = config.eval.feature_network
  if name not in features.FEATURE_NETWORKS:
    raise ConfigError(
      f"eval.feature_network={name!r} is unknown; choose one of"
      f" {features.FEATURE_NETWORKS}."
    )
  if name == "none":
    return None
  if name == "inception":
    weights = config.eval.get("inception_weights", "")
    if not weights:
      raise ConfigError(
        "eval.feature_network='inception' needs eval.inception_weights:"
        " pytorch-fid's FID Inception weights, downloaded once from"
        f" {inception_weights.FID_WEIGHTS_URL}; pass"
        f" {inception_weights.FLAG} (or --config.eval.feature_network=none)."
      )
    network = features.InceptionFeatures(weights)
    network.check_shape(pixel_shape(config))
    return network
  if not config.eval.classifier_workdir:
    raise ConfigError(
      "eval.feature_network='classifier' needs eval.classifier_workdir: the"
      " workdir of an end-to-end ViT trained on the same data, e.g."
      " --config.eval.classifier_workdir=runs/fm_e2e"
    )
  network = classifier_features(config.eval.classifier_workdir)
  network.check_shape(pixel_shape(config))
  return network


def _task_of(config):
  """The task of `config`'s experiment, built abstractly (no parameters
  are made)."""
  from dblocks_jax import families

  family = families.get(config.model.name)
  built = {}

  def build():
    built["task"] = family.build(config).task
    return ()

  jax.eval_shape(build)
  return built["task"]


def classifier_features(workdir: str) -> features.ClassifierFeatures:
  """The features of the image classifier trained in `workdir` (its newest
  checkpoint): the classifier head's input (`task.features`, which the
  end-to-end ViT's `EndToEndClassification` has).

  Reads the run's config and finds the checkpoint now (a run whose task
  gives no features, or one without a checkpoint, is refused); the
  classifier is restored at the first call.
  """
  from dblocks_jax.families import runs
  from dblocks_jax.training import checkpoint

  workdir = os.path.abspath(workdir)
  run_config = runs.read_run_config(workdir)
  if not hasattr(_task_of(run_config), "features"):
    raise ConfigError(
      f"eval.classifier_workdir={workdir} holds a"
      f" {run_config.method} {run_config.model.name} run; FID features"
      " need the end-to-end ViT classifier (a vit_* config with :e2e)"
      " trained on the same data."
    )
  directory = os.path.join(workdir, "checkpoints")
  with checkpoint.Checkpointer(directory, read_only=True) as ckpt:
    step = ckpt.latest_step()
  if step is None:
    raise ConfigError(
      f"eval.classifier_workdir={workdir} has no checkpoint; train"
      " the classifier first (a vit_* config with :e2e)."
    )

  def load():
    _, experiment, trainer = runs.restore_run(run_config, workdir, step=step)
    graphdefs, shared = trainer.graphdefs, trainer.arrays()["shared"]
    trainer.close()
    task = experiment.task
    mean, std = normalisation(DataOptions.from_mapping(run_config.data))
    mean, std = jnp.asarray(mean), jnp.asarray(std)

    def image_features(shared, pixels):
      parts = parts_lib.merge(graphdefs.shared, shared)
      return task.features(parts, (pixels - mean) / std)

    return image_features, shared

  return features.ClassifierFeatures(
    load,
    image_shape=run_config.data.image_shape,
    workdir=workdir,
    step=step,
    dataset=run_config.data.name,
  )


# ----- FID reference images -------------------------------------------------


def reference_kind(config) -> str:
  """`eval.reference_data` with "" resolved: "data" or "encode"."""
  name = config.eval.get("reference_data", "")
  if name not in REFERENCE_DATA:
    raise ConfigError(
      f"eval.reference_data={name!r} is unknown; choose one of"
      f" {REFERENCE_DATA}."
    )
  name = name or ("encode" if is_latent(config) else "data")
  if name == "data" and is_latent(config):
    raise ConfigError(
      "eval.reference_data='data' would compare pixels with latents; use"
      " 'encode' (or '') for a latent dataset."
    )
  if name == "encode" and "encode" not in config:
    raise ConfigError(
      "eval.reference_data='encode' needs the encode.* fields of a latent"
      " config; use 'data' (or '')."
    )
  return name


def reference_images(config) -> reference.ReferenceImages:
  """The FID reference images of `config` (`reference_kind`), split
  `eval.reference_split`: "data" is `data` itself; "encode" the images of
  `encode.images` centre-cropped to `encode.image_size`, which must be the
  decoded samples' size."""
  name = reference_kind(config)
  split = config.eval.reference_split
  if name == "data":
    options = DataOptions.from_mapping(config.data)
    return reference.ReferenceImages("data", options.replace(eval_split=split))
  size = int(config.encode.image_size)
  sample = list(pixel_shape(config))
  if sample != [size, size, 3]:
    raise ConfigError(
      f"eval.reference_data='encode' crops to {size}x{size} but the decoded"
      f" samples are {sample}; set encode.image_size to the decoded size."
    )
  options = DataOptions.from_mapping(config.encode.images)
  return reference.ReferenceImages(
    "encode",
    options.replace(eval_split=split),
    crop=size,
    label=f"encode.images, eval.reference_split={split!r}",
  )


# ----- Generators -------------------------------------------------------------


def sample_settings(config, inference_steps: int) -> generation.SampleSettings:
  """`eval.num_samples` balanced samples, keyed by `seed` + 1, in batches of
  `eval_batch_size`; the sampler settings of `sampler.*`."""
  return generation.SampleSettings(
    num_samples=int(config.eval.num_samples),
    num_classes=int(config.data.num_classes),
    seed=int(config.seed) + 1,
    batch_size=int(config.eval_batch_size),
    inference_steps=int(inference_steps),
    sampler=config.sampler.method,
    guidance_scale=float(config.sampler.guidance_scale),
  )


def sample_evaluator(
  config, sample_fn, *, inference_steps: int, cache_dir: str
) -> generation.SampleEvaluator:
  """A generator's evaluator (`generation.SampleEvaluator`): samples and,
  with a feature network, their FID against `reference_images`.

  Making one checks now, and loads nothing: the feature network's weight
  file (`feature_network`), for latents the VAE's (`sample_pixels`), and
  the reference statistics are cached or their images present.

  Args:
    config: the run's config (`eval.*`, `data.*`, `encode.*`, `sampler.*`).
    sample_fn: `sample_fn(trainer)` -> `sample(labels [b], key)` ->
      [b, H, W, C] samples in the data space.
    inference_steps: the sampler's steps (for eval.json).
    cache_dir: where reference statistics are cached.
  """
  network = feature_network(config)
  to_pixels = references = None
  if network is not None:
    to_pixels = sample_pixels(config)
    references = reference_images(config)
  return generation.SampleEvaluator(
    sample_fn,
    sample_settings(config, inference_steps),
    feature_network=network,
    sample_pixels=to_pixels,
    reference=references,
    cache_dir=cache_dir,
  )


# ----- The language models' judge ---------------------------------------------


def load_judge(workdir: str, *, vocab_size: int, tokenizer_proto: bytes):
  """The end-to-end AR LM of `workdir` as a `judge.Judge`, checked against
  the evaluated model's vocabulary (`vocab_size`) and tokenizer
  (`tokenizer_proto`, the judge run's `tokenizer.model`)."""
  from dblocks_jax.families import runs

  config = runs.read_run_config(workdir)
  if config.model.name != "ar" or config.method != "e2e":
    raise ConfigError(
      f"eval.judge_workdir={workdir} holds a {config.method}"
      f" {config.model.name} run; the judge is an end-to-end AR LM (an"
      " ar_* config with :e2e) trained on the same corpus."
    )
  if config.model.vocab_size != vocab_size:
    raise ConfigError(
      f"the judge in eval.judge_workdir={workdir} has a"
      f" {config.model.vocab_size}-piece vocabulary but model.vocab_size="
      f"{vocab_size}; train the judge with the same tokenizer."
    )
  path = os.path.join(workdir, JUDGE_TOKENIZER_FILE)
  if not os.path.isfile(path):
    raise ConfigError(
      f"{path} is missing: the judge's run has not finished an evaluation;"
      " evaluate it (--mode=eval) to write its tokenizer."
    )
  with open(path, "rb") as f:
    if f.read() != tokenizer_proto:
      raise ConfigError(
        f"the judge in eval.judge_workdir={workdir} was trained with"
        " another tokenizer; train it with the evaluated run's"
        " data.tokenizer."
      )
  _, _, trainer = runs.restore_run(config, workdir)
  step = trainer.step_count
  graphdefs, arrays = trainer.graphdefs, trainer.arrays()
  trainer.close()

  def model(arrays):
    return parts_lib.merge(graphdefs.shared, arrays["shared"])["model"]

  description = {"judge_workdir": os.path.abspath(workdir), "judge_step": step}
  return judge.Judge(model, arrays, description=description)
