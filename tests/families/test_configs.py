"""Every config in configs/ loads (with its arguments), builds its family's
experiment, and runs its `:smoke` from start to final evaluation."""

import glob
import importlib
import os
import re

import jax
import pytest
from conftest import needs
from flax import nnx

from dblocks_jax import families
from dblocks_jax.cli import encode
from dblocks_jax.families import train
from dblocks_jax.models.pretrained import vae, vae_weights

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
RECIPES = ("common.py", "images.py", "language.py")
CONFIGS = sorted(
  os.path.basename(p)[:-3]
  for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
  # The recipes the configs are composed of are not configs.
  if os.path.basename(p) not in ("__init__.py", *RECIPES)
)


def _module(name):
  return importlib.import_module(f"configs.{name}")


def test_every_config_is_documented_and_every_documented_one_exists():
  """docs/configs.md's table has a row per config file, and every
  `configs/X.py` the README and the docs name is a file that exists."""
  with open(os.path.join(ROOT, "docs", "configs.md")) as f:
    table = set(re.findall(r"^\| `([a-z0-9_]+)\.py` \|", f.read(), re.M))
  assert table == set(CONFIGS)
  documents = [os.path.join(ROOT, "README.md")]
  documents += glob.glob(os.path.join(ROOT, "docs", "*.md"))
  for path in documents:
    with open(path) as f:
      named = set(re.findall(r"configs/([a-z0-9_]+)\.py", f.read()))
    assert named <= set(CONFIGS), (path, named - set(CONFIGS))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_locks_and_builds(name):
  module = _module(name)
  assert module.__doc__ and "python -m dblocks_jax.main" in module.__doc__
  full, baseline = module.get_config(), module.get_config("e2e")
  assert full.method == "dblocks" and baseline.method == "e2e"
  if full.model.name == "recurrent":  # Epochs as the paper's (15 and 5).
    assert full.total_steps >= baseline.total_steps
  else:  # The same layer evaluations: B x the steps of the baseline.
    assert full.total_steps == baseline.total_steps * full.blocks.num_blocks
  full.lock()
  with pytest.raises(AttributeError):
    full.model.no_such_field = 1
  with pytest.raises(ValueError, match="unknown"):
    module.get_config("no_such_argument")
  family = families.get(full.model.name)

  # The full-size model, as shapes only (no memory).
  def parts():
    model = family.build(full).model
    out = {f"shared/{k}": m for k, m in model.shared.items()}
    for b, block in enumerate(model.blocks):
      out.update({f"{b}/{k}": m for k, m in block.items()})
    return out

  abstract = nnx.eval_shape(parts)
  assert f"{full.blocks.num_blocks - 1}/layers" in abstract
  spec = family.batch_spec(full)
  assert all(x.shape[0] == full.batch_size for x in jax.tree.leaves(spec))


@pytest.fixture(scope="module")
def latent_smoke_dir(tmp_path_factory):
  """The smoke latent dataset of dit_imagenet (a random tiny VAE)."""
  needs("safetensors", "weights")
  root = tmp_path_factory.mktemp("latents")
  config = _module("dit_imagenet").get_config("smoke")
  model = vae.AutoencoderKL(encode.vae_config(config), rngs=nnx.Rngs(0))
  config.encode.vae_weights = str(root / "vae.safetensors")
  vae_weights.save_vae(model, config.encode.vae_weights)
  config.data.dir = str(root / "latents")
  encode.encode_dataset(config)
  return config.data.dir, config.encode.vae_weights


# Smoke runs that train what another config's smoke run trains (the LM1B
# recipes' smoke settings switch to the Python docs); only the recipe's
# optimizer and epoch numbers differ, which the test below holds.
SAME_SMOKE_RUN = {"ar_lm1b": "ar_pydocs", "huginn_lm1b": "huginn_pydocs"}


def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


@pytest.mark.parametrize("name", sorted(SAME_SMOKE_RUN))
def test_a_smoke_run_left_out_trains_what_another_trains(name):
  config = _flat(_module(name).get_config("smoke").to_dict())
  other = _flat(_module(SAME_SMOKE_RUN[name]).get_config("smoke").to_dict())
  differ = {
    k for k in config.keys() | other.keys() if config.get(k) != other.get(k)
  }
  assert differ <= {
    "epochs",
    "steps_per_epoch",
    "optimizer.learning_rate",
    "optimizer.min_learning_rate",
  }


@pytest.mark.parametrize("name", CONFIGS)
def test_smoke_runs(name, tmp_path, request):
  if name in SAME_SMOKE_RUN:
    pytest.skip(f"trains what {SAME_SMOKE_RUN[name]}:smoke trains")
  config = _module(name).get_config("smoke")
  if config.model.name in ("ar", "recurrent"):  # SentencePiece tokenizers.
    needs("sentencepiece", "lm")
  if name == "quickstart":  # The session's trained smoke run.
    _, tmp_path, result = request.getfixturevalue("trained_smoke")
    assert result["step"] == config.total_steps
    return
  if config.data.name == "latents":
    config.data.dir, config.encode.vae_weights = request.getfixturevalue(
      "latent_smoke_dir"
    )
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == config.total_steps
  # One measure of quality: accuracy, samples (and FID), or BPC.
  assert sum(k in result for k in ("accuracy", "num_samples", "bpc")) == 1
  assert os.path.exists(tmp_path / "eval.json")
