"""`--mode=sample`: images from the newest checkpoint of a generator.

Writes `samples/step_<N>.png` (a grid, one column per class by default) and
`samples/step_<N>.npz` (`images` uint8 [n, H, W, C], `labels` [n], and the
sampler settings). The same config and seed give the same images; latents
are decoded by the SD VAE, as in the FID evaluation.
"""

import os

import jax
import ml_collections
import numpy as np

from dblocks_jax import evaluate, runs
from dblocks_jax.errors import ConfigError


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str):
  """Samples the run in `workdir`; returns the files written and settings."""
  from dblocks_jax.families import dit

  if config.model.name != "dit":
    raise ConfigError(
      f"--mode=sample needs a generator (model.name='dit'); this config"
      f" trains a {config.model.name} classifier. Use --mode=eval."
    )
  workdir = os.path.abspath(workdir)
  _, experiment, trainer = runs.restore_run(config, workdir)
  sampler = dit.sampler_from_config(config, experiment.plan)
  s = config.sample
  labels = (
    np.asarray(s.labels, np.int32)
    if len(s.labels)
    else evaluate.generation.class_labels(
      s.num_samples, config.data.num_classes
    )
  )
  images = evaluate.generate(
    dit.sample_fn(trainer, sampler),
    labels,
    jax.random.key(s.seed),
    batch_size=min(config.eval_batch_size, len(labels)),
  )
  pixels = evaluate.SamplePixels(config)(images, config.eval_batch_size)
  step = trainer.step_count
  trainer.close()
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
