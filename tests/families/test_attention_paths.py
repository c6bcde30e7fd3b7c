"""`model.attention_impl` of the ViT, DiT and masked-diffusion families: a
block's loss and gradients are the same (to float rounding) on the dense
and chunked paths; the field is checked and named; attention dropout keeps
"auto" dense and makes "chunked" an error; the path is logged and
reported; runs saved before the field read as dense."""

import copy

import jax
import pytest
from random_params import assert_trees_close, block_loss_and_gradients
from saved_runs import reread_as_saved

from configs import dit_cifar10, mdm_text8, vit_cifar100
from dblocks_jax import families
from dblocks_jax.cli import memory
from dblocks_jax.errors import ConfigError

CONFIGS = {"vit": vit_cifar100, "dit": dit_cifar10, "mdm": mdm_text8}


def _smoke(name: str, attention_impl: str):
  config = CONFIGS[name].get_config("smoke")
  if name == "vit":  # The chunked path has no attention dropout.
    config.model.attention_dropout = 0.0
  config.model.attention_impl = attention_impl
  return config


@pytest.mark.parametrize(
  "name, method",
  [("vit", "dblocks"), ("dit", "dblocks"), ("mdm", "dblocks"), ("mdm", "e2e")],
)
def test_chunked_attention_gives_the_dense_loss_and_gradients(name, method):
  """Block 0's loss (the whole network's end to end) and its gradients."""
  results = {}
  for impl in ("dense", "chunked"):
    config = _smoke(name, impl)
    config.method = method
    results[impl] = block_loss_and_gradients(config)
  dense_loss, dense_grads = results["dense"]
  loss, grads = results["chunked"]
  assert float(loss) == pytest.approx(float(dense_loss), rel=1e-5)
  assert_trees_close(grads, dense_grads)


def test_the_recipes_defaults():
  """auto where it lowers memory (DiT, the token DiT); dense for the ViT
  (short sequences, attention dropout)."""
  defaults = {
    n: c.get_config().model.attention_impl for n, c in CONFIGS.items()
  }
  assert defaults == {"vit": "dense", "dit": "auto", "mdm": "auto"}


@pytest.mark.parametrize("name", ["vit", "dit", "mdm"])
def test_an_unknown_attention_impl_names_the_field_and_the_choices(name):
  config = _smoke(name, "flash")
  with pytest.raises(ConfigError) as error:
    families.get(name).build(config)
  message = str(error.value)
  assert message.startswith("model.attention_impl='flash' is unknown")
  assert all(f"'{c}'" in message for c in ("dense", "chunked", "auto"))


def test_vit_attention_dropout_keeps_auto_dense_and_refuses_chunked():
  config = vit_cifar100.get_config("smoke")
  assert config.model.attention_dropout > 0  # The paper's recipe.
  family, platform = families.get("vit"), jax.default_backend()
  assert config.model.attention_impl == "dense"  # The ViT recipes' default.
  config.model.attention_impl = "auto"
  assert family.attention_path(config) == (
    f"dense (auto on {platform}, attention dropout)"
  )
  config.model.attention_impl = "chunked"
  with pytest.raises(ConfigError) as error:
    family.build(config)
  message = str(error.value)
  assert "model.attention_impl='chunked'" in message
  assert "model.attention_dropout=0.1" in message


@pytest.mark.parametrize("name", ["vit", "dit", "mdm"])
def test_the_path_is_logged_and_reported(name, caplog):
  config = _smoke(name, "auto")
  path = f"chunked (auto on {jax.default_backend()})"
  assert memory.attention_path(config) == path
  with caplog.at_level("INFO"):
    families.get(name).build(config)
  assert f"attention: {path}" in caplog.text
  config.model.attention_impl = "dense"
  assert memory.attention_path(config) == "dense (dense as set)"


@pytest.mark.parametrize("name", ["vit", "dit", "mdm"])
def test_runs_saved_before_the_field_read_as_dense(name, tmp_path):
  config = CONFIGS[name].get_config("smoke")
  old = reread_as_saved(
    config, tmp_path, lambda payload: payload["model"].pop("attention_impl")
  )
  assert old.model.attention_impl == "dense"
  assert memory.attention_path(copy.deepcopy(old)).startswith("dense")
