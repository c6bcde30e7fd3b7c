"""`--mode=sample`: samples from the newest checkpoint of a generator.

The family writes them (`write_samples`): DiT writes an image grid and the
images, the masked-diffusion LM a text file. The same config and seed give
the same samples.
"""

import os

import ml_collections

from dblocks_jax import families
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import runs


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str):
  """Samples the run in `workdir`; returns the files written and settings
  (the family's `write_samples` result)."""
  family = families.get(config.model.name)
  if not hasattr(family, "write_samples"):
    raise ConfigError(
      f"--mode=sample needs a generator (model.name one of"
      f" {generators()}); this config trains a {config.model.name}"
      " classifier. Use --mode=eval."
    )
  workdir = os.path.abspath(workdir)
  _, experiment, trainer = runs.restore_run(config, workdir)
  try:
    return family.write_samples(config, experiment, trainer, workdir)
  finally:
    trainer.close()


def generators() -> list[str]:
  return [
    n for n in families.names() if hasattr(families.get(n), "write_samples")
  ]
