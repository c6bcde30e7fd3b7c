"""Feature networks for the Frechet distance.

A feature network maps pixels in [0, 1], `[batch, H, W, C]` float32, to
`[batch, dim]` features. `ClassifierFeatures` uses a ViT classifier trained
by this project (the end-to-end baseline of a `vit_*` config) on the same
dataset: its features are the final-LayerNorm CLS token, the classifier
head's input. It serves data for which no standard feature network exists
(Fashion-MNIST); distances in different feature spaces are not comparable.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax import state
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.data.info import normalisation
from dblocks_jax.errors import ConfigError

FEATURE_NETWORKS = ("classifier", "none")


class ClassifierFeatures:
  """Features of a trained end-to-end ViT classifier run (its workdir)."""

  def __init__(self, workdir: str):
    workdir = os.path.abspath(workdir)
    config = state.read_run_config(workdir)
    if config.model.name != "vit" or config.method != "e2e":
      raise ConfigError(
        f"eval.classifier_workdir={workdir} holds a {config.method}"
        f" {config.model.name} run; FID features need the end-to-end ViT"
        " classifier (a vit_* config with :e2e) trained on the same data."
      )
    exp, graphdefs, trained = state.restore_run(config, workdir)
    del exp
    self.workdir = workdir
    self.step = int(trained["step"])
    self.image_shape = tuple(config.data.image_shape)
    self.dataset = config.data.name
    mean, std = normalisation(config.data)
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    params = trained["shared"]["params"]

    @jax.jit
    def features(pixels):
      model = parts_lib.merge(graphdefs.shared, params)["model"]
      return model.features((pixels - mean) / std)

    self._features = features

  @property
  def description(self) -> dict:
    """What identifies this feature space (for caches and eval.json)."""
    return {
      "feature_network": "classifier",
      "classifier_workdir": self.workdir,
      "classifier_step": self.step,
      "classifier_data": self.dataset,
    }

  def check_shape(self, image_shape) -> None:
    if tuple(image_shape) != self.image_shape:
      raise ConfigError(
        f"the classifier in {self.workdir} takes {list(self.image_shape)}"
        f" images but the samples are {list(image_shape)}; train the"
        " classifier on the generator's dataset."
      )

  def __call__(self, pixels: np.ndarray) -> np.ndarray:
    """pixels: [batch, H, W, C] in [0, 1] -> [batch, width]."""
    return np.asarray(self._features(jnp.asarray(pixels, jnp.float32)))


def from_config(config):
  """The feature network of `config.eval`, or None for "none"."""
  name = config.eval.feature_network
  if name not in FEATURE_NETWORKS:
    raise ConfigError(
      f"eval.feature_network={name!r} is unknown; choose one of"
      f" {FEATURE_NETWORKS}."
    )
  if name == "none":
    return None
  if not config.eval.classifier_workdir:
    raise ConfigError(
      "eval.feature_network='classifier' needs eval.classifier_workdir: the"
      " workdir of an end-to-end ViT trained on the same data, e.g."
      " --config.eval.classifier_workdir=runs/fm_e2e"
    )
  network = ClassifierFeatures(config.eval.classifier_workdir)
  network.check_shape(config.data.image_shape)
  return network
