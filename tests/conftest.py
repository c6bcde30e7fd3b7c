"""Shared fixtures: tiny configs that run in seconds, and the test tier.

Tests marked `slow` (minutes each on 2 CPU cores: the notebooks and the
library example's 8-device session in tests/test_docs.py) are
skipped unless pytest is given `--slow`.

Tests compile many small programs, so XLA's optimisations are switched off
(`jax_disable_most_optimizations`): compiling dominates, and the programs'
results do not depend on it beyond float rounding. For the same reason
XLA:CPU's elemental emitters replace its fusion emitters
(`--xla_cpu_use_fusion_emitters=false`): they compile the suite's steps
about 3x faster (0.8 against 2.4 s for the quickstart smoke block step) and
the whole suite in 12 minutes instead of 18 on 2 cores. Subprocesses (the
command line tests) inherit both through the environment
(`xla_flags` for the tests that add flags of their own).
"""

import copy
import os


def xla_flags(*flags: str) -> str:
  """This process's XLA_FLAGS with `flags` added (for a subprocess that
  needs flags of its own, e.g. a device count)."""
  return " ".join((os.environ.get("XLA_FLAGS", ""), *flags)).strip()


os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
FAST_COMPILE_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = xla_flags(FAST_COMPILE_FLAGS)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from configs import quickstart  # noqa: E402

# Eight fake CPU devices for the mesh tests (before JAX starts a backend).
jax.config.update("jax_num_cpu_devices", 8)


def pytest_addoption(parser):
  parser.addoption(
    "--slow",
    action="store_true",
    help="also run the tests marked slow (the notebooks: minutes each).",
  )


def pytest_configure(config):
  config.addinivalue_line(
    "markers", "slow: minutes on 2 CPU cores; runs with --slow."
  )


def pytest_collection_modifyitems(config, items):
  if config.getoption("--slow"):
    return
  skip = pytest.mark.skip(reason="slow: run with --slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


@pytest.fixture
def smoke_config():
  """The quickstart's smoke config with the official settings: 3 layers,
  B=3, equi-probable partition, bundled digits."""
  return copy.deepcopy(quickstart.get_config("smoke,official"))


@pytest.fixture(scope="session")
def trained_smoke(tmp_path_factory):
  """(config, workdir, eval.json) of a finished quickstart smoke run (its
  own settings; 12 steps)."""
  from dblocks_jax.families import train

  config = quickstart.get_config("smoke")
  workdir = tmp_path_factory.mktemp("trained_smoke")
  result = train.train_and_evaluate(config, str(workdir))
  return config, workdir, result


def needs(module: str, extra: str):
  """`module`, imported; without it (an extra not installed) the test skips
  with a reason that names the extra."""
  return pytest.importorskip(
    module, reason=f"needs the [{extra}] extra ({module})"
  )


def snapshot(tree):
  """A host copy of every leaf, safe from buffer donation."""
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


TINY_TFDS = "dblocks_test_images"


@pytest.fixture(scope="session")
def prepared_tfds(tmp_path_factory) -> str:
  """A data_dir holding `TINY_TFDS` prepared as ArrayRecord files: 4x4x3
  uint8 images, 3 classes, 6 train and 2 test examples."""
  import tensorflow_datasets as tfds

  class DblocksTestImages(tfds.core.GeneratorBasedBuilder):
    """A tiny TFDS dataset that can be prepared without TensorFlow
    (`Image` features need TensorFlow to encode; a uint8 `Tensor` does
    not)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "image": tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=3),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {
        "train": self._generate_examples(6),
        "test": self._generate_examples(2),
      }

    def _generate_examples(self, count):
      rng = np.random.default_rng(count)
      for i in range(count):
        image = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        yield i, {"image": image, "label": i % 3}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = DblocksTestImages(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return data_dir
