"""Seeded test data shared by tests/models/test_inception.py and
tools/inception_goldens.py (which writes the torch goldens), in plain numpy.

The full FID Inception has 22M parameters, too many to keep in the repo, so
both sides regenerate the same random weights from a seed and the repo holds
only the torch outputs (tests/fixtures/inception_golden.npz).
"""

import collections

import numpy as np

WEIGHT_SEED = 0
INPUT_SEED = 1
# 1-d resizes checked as torch's interpolation matrices (n_in, n_out), and
# 2-d resizes of random [batch, channels, H, W] images to (H', W').
MATRIX_RESIZES = ((32, 299), (28, 299), (9, 4), (300, 299))
IMAGE_RESIZES = (((2, 3, 5, 7), (11, 13)), ((1, 2, 9, 12), (4, 5)))


def random_state_dict(shapes: dict) -> dict[str, np.ndarray]:
  """Random FID-Inception tensors {torchvision name: PyTorch-layout array}
  for {name: shape}, drawn in sorted name order from RandomState(0), scaled
  so that activations stay of order one: conv weights N(0, 2 / fan_in),
  BatchNorm weight and running_var U(0.5, 1.5), bias and running_mean
  N(0, 0.1^2)."""
  rng = np.random.RandomState(WEIGHT_SEED)
  out = {}
  for name in sorted(shapes):
    shape = tuple(shapes[name])
    if name.endswith("conv.weight"):
      fan_in = int(np.prod(shape[1:]))
      value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif name.endswith(("bn.weight", "bn.running_var")):
      value = rng.uniform(0.5, 1.5, shape)
    elif name.endswith(("bn.bias", "bn.running_mean")):
      value = rng.normal(0.0, 0.1, shape)
    else:
      raise ValueError(f"no rule for {name}")
    out[name] = value.astype(np.float32)
  return out


def golden_inputs() -> dict[str, np.ndarray]:
  """Pixels in [0, 1], NHWC: one 32x32 RGB and one 28x28 grey image."""
  rng = np.random.RandomState(INPUT_SEED)
  return {
    "rgb32": rng.uniform(0, 1, (1, 32, 32, 3)).astype(np.float32),
    "grey28": rng.uniform(0, 1, (1, 28, 28, 1)).astype(np.float32),
  }


def resize_inputs() -> list[np.ndarray]:
  """NCHW images for the 2-d resizes of IMAGE_RESIZES."""
  rng = np.random.RandomState(INPUT_SEED + 1)
  return [
    rng.standard_normal(shape).astype(np.float32) for shape, _ in IMAGE_RESIZES
  ]


def tiny_state_dict() -> collections.OrderedDict:
  """A small state dict as numpy, in the order the fixtures were saved.

  `base_t` is the transpose of `base` and `base_tail` a slice of it: torch
  saves all three on one storage, with strides and an offset. `bn.bias` is
  saved as an `nn.Parameter`.
  """
  rng = np.random.RandomState(2)
  base = rng.standard_normal((4, 6)).astype(np.float32)
  return collections.OrderedDict(
    [
      ("conv.weight", rng.standard_normal((3, 2, 2, 2)).astype(np.float32)),
      ("bn.bias", rng.standard_normal(5).astype(np.float32)),
      ("bn.num_batches_tracked", np.asarray(7, np.int64)),
      ("half", rng.standard_normal(3).astype(np.float16)),
      ("base", base),
      ("base_t", base.T),
      ("base_tail", base[1:, 2:]),
    ]
  )
