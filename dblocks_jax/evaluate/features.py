"""Feature networks for the Frechet distance.

A feature network maps pixels in [0, 1], `[batch, H, W, C]` float32, to
`[batch, dim]` features; its `description` identifies the feature space (the
reference-statistics cache key, also written into eval.json). Distances in
different feature spaces are not comparable.

  "inception": `InceptionFeatures`, the standard FID space: the 2048-d pool
    features of the FID Inception-v3 (pytorch-fid's port of the TensorFlow
    FID graph and weights, `models.inception`), for RGB or grey images of
    any size (resized to 299x299). The weight file is downloaded once by the
    user (`inception_weights.FID_WEIGHTS_URL`; eval.inception_weights); it
    is checked when the network is made and loaded at its first call.
  "classifier": `ClassifierFeatures`, an image classifier trained by this
    project (the end-to-end baseline of a `vit_*` config) on the same
    dataset: the classifier head's input (the ViT's final-LayerNorm CLS
    token). It serves data for which Inception features mean little
    (Fashion-MNIST).
  "none": no feature network; sampling without FID.

`families.evaluation.feature_network` makes one as a config names it.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dblocks_jax.errors import ConfigError
from dblocks_jax.evaluate.pixels import LazyParams, call_padded
from dblocks_jax.models.pretrained import inception, inception_weights

FEATURE_NETWORKS = ("inception", "classifier", "none")


class _LazyNetwork:
  """A feature network whose parameters (`params`, a `LazyParams`) load at
  its first call and leave the device at `release`; `kind` and
  `identity()` name its feature space."""

  kind = ""

  def identity(self) -> dict:
    raise NotImplementedError

  @property
  def description(self) -> dict:
    """What identifies this feature space (for caches and eval.json)."""
    return {"feature_network": self.kind, **self.identity()}

  def release(self) -> None:
    """Frees the network's device memory until the next call."""
    self.params.release()


class ClassifierFeatures(_LazyNetwork):
  """Features of a trained image classifier (a checkpoint of a run).

  Making one builds nothing: the classifier is loaded at the first call
  (`params`) and leaves the device at `release` (a host copy serves the
  next call).

  Args:
    load: `() -> (features, params)`: the classifier's parameters (a pytree
      of arrays) and `features(params, pixels) -> [batch, width]`, pixels
      [batch, H, W, C] in [0, 1] (jittable; it normalises them as the
      classifier was trained).
    image_shape: [H, W, C] of the images the classifier takes.
    workdir: the classifier's run (for `description`).
    step: its checkpoint's step (for `description`).
    dataset: the data it was trained on (for `description`).
  """

  def __init__(self, load, *, image_shape, workdir: str, step: int, dataset):
    self.workdir = os.path.abspath(workdir)
    self.step = int(step)
    self.dataset = dataset
    self.image_shape = tuple(int(d) for d in image_shape)
    self._load_features = load
    self.params = LazyParams(self._load)
    self._features = None  # Jitted at the first call.

  def _load(self):
    features, params = self._load_features()
    self._features = jax.jit(features)
    return params

  kind = "classifier"

  def identity(self) -> dict:
    return {
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
    shared = self.params.get()
    return np.asarray(self._features(shared, jnp.asarray(pixels, jnp.float32)))


class InceptionFeatures(_LazyNetwork):
  """Pool features [batch, 2048] of the FID Inception-v3 with the weights
  of `weights_path` (pytorch-fid's pt_inception-2015-12-05-6726825d.pth).

  Making one checks the file (`inception_weights.check_file`: it exists, is
  well formed, unsafe pickles refused; its sha256 for `description`) and
  builds nothing: the network is loaded at the first call (`params`) and
  leaves the device at `release` (a host copy serves the next call).
  """

  def __init__(self, weights_path: str):
    self.weights_path = os.path.abspath(weights_path)
    self.sha256 = inception_weights.check_file(self.weights_path)
    self.params = LazyParams(self._load)
    self._batch = 0  # The first batch size; smaller batches are padded.
    # Two programs: the resize (per input size), then the network at 299.
    self._preprocess = jax.jit(inception.preprocess)
    self._network = None  # Jitted at the first call.

  def _load(self):
    model = inception_weights.load_inception(self.weights_path)
    graphdef, params = nnx.split(model)
    self._network = jax.jit(
      lambda params, x: nnx.merge(graphdef, params).pool_features(x)
    )
    return params

  kind = "inception"

  def identity(self) -> dict:
    return {
      "inception_weights": os.path.basename(self.weights_path),
      "inception_sha256": self.sha256,
    }

  def check_shape(self, image_shape) -> None:
    shape = tuple(image_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3) or min(shape) < 1:
      raise ConfigError(
        f"Inception features take [H, W, 1 or 3] images but the samples are"
        f" {list(shape)}; use --config.eval.feature_network=none (or"
        " classifier) for other data."
      )

  def __call__(self, pixels: np.ndarray) -> np.ndarray:
    """pixels: [batch, H, W, 1 or 3] in [0, 1] -> [batch, 2048].

    A batch smaller than the first one (the last of a split) is padded to
    its size, so that one compiled network serves every batch.
    """
    pixels = np.asarray(pixels, np.float32)
    params = self.params.get()
    self._batch = self._batch or len(pixels)
    return call_padded(
      lambda x: self._network(params, self._preprocess(x)),
      pixels,
      self._batch,
    )
