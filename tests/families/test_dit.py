"""DiT: the reference definition (parameter counts, init, position table),
the EDM wrapper, and its block-wise split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import dit_fashion_mnist, dit_imagenet, images
from dblocks_jax import diffusion, families
from dblocks_jax.errors import ConfigError
from dblocks_jax.families.dit import model_config as dit_model_config
from dblocks_jax.models import dit
from dblocks_jax.nn import embed
from dblocks_jax.tasks.generation import standard_denoise

# Trainable parameters of the reference DiT (32x32x4 latents, 1,000 classes
# plus the null class, learn_sigma=True), as published with the paper's
# 33M / 130M / 458M / 675M.
REFERENCE_TRAINABLE = {
  "S/2": 32_865_056,
  "B/2": 130_315_808,
  "L/2": 457_840_672,
  "XL/2": 674_834_720,
  "XL/4": 675_000_704,
  "XL/8": 675_664_640,
}


def _config(variant="S/2", **model):
  c = dit_imagenet.get_config()
  images.set_dit_variant(c, variant)
  for k, v in model.items():
    c.model[k] = v
  return c


def _abstract_parts(config, num_blocks=1):
  """All parts of a block-wise DiT, as shapes only (no memory)."""
  with config.unlocked():
    config.blocks.num_blocks = num_blocks

  def build():
    model = families.get("dit").build(config).model
    modules = {f"shared/{k}": m for k, m in model.shared.items()}
    for b, block in enumerate(model.blocks):
      modules.update({f"{b}/{k}": m for k, m in block.items()})
    return modules

  return nnx.eval_shape(build)


def _count(modules) -> int:
  return sum(
    x.size
    for m in modules.values()
    for x in jax.tree.leaves(nnx.state(m, nnx.Param))
  )


@pytest.mark.parametrize("variant", sorted(REFERENCE_TRAINABLE))
def test_parameter_count_matches_the_reference(variant):
  config = _config(variant)
  with config.unlocked():
    config.method = "e2e"
  assert _count(_abstract_parts(config)) == REFERENCE_TRAINABLE[variant]
  assert dit.reference_param_count(variant) == REFERENCE_TRAINABLE[variant]


def test_blockwise_split_keeps_the_count_in_shared_mode():
  config = _config("S/2")
  assert _count(_abstract_parts(config, 3)) == REFERENCE_TRAINABLE["S/2"]


def test_independent_mode_adds_one_shell_per_extra_block():
  config = _config("S/2")
  shell = REFERENCE_TRAINABLE["S/2"] - 12 * (18 * 384**2 + 15 * 384)
  with config.unlocked():
    config.blocks.sharing = "independent"
  count = _count(_abstract_parts(config, 3))
  assert count == REFERENCE_TRAINABLE["S/2"] + 2 * shell


def test_learn_sigma_off_drops_the_variance_outputs():
  config = _config("S/2", learn_sigma=False)
  with config.unlocked():
    config.method = "e2e"
  saved = 384 * 2 * 2 * 4 + 2 * 2 * 4
  assert _count(_abstract_parts(config)) == REFERENCE_TRAINABLE["S/2"] - saved


def test_unknown_variant_is_refused():
  with pytest.raises(ValueError, match="DiT-M/2"):
    dit.parse_variant("DiT-M/2")
  with pytest.raises(ValueError, match="S/3"):
    dit.parse_variant("S/3")
  assert dit.parse_variant("DiT-XL/4") == (28, 1152, 16, 4)


def test_attention_kind_comes_from_the_config():
  config = dit_fashion_mnist.get_config("smoke")
  config.model.attention = "dot_product"
  assert families.get("dit").build(config).model  # Builds.
  assert dit_model_config(config).attention == "dot_product"
  config.model.attention = "flash"
  with pytest.raises(ConfigError, match=r"^model\.attention='flash' is"):
    families.get("dit").build(config)


def _smoke_parts(seed=0):
  config = dit_fashion_mnist.get_config("smoke")
  with config.unlocked():
    config.method = "e2e"
    config.seed = seed
  exp = families.get("dit").build(config)
  parts = dict(exp.model.shared)
  parts.update(exp.model.blocks[0])
  return config, parts


def test_fresh_dit_outputs_exactly_zero():
  """Zero adaLN and final Linear: F = 0, so D = c_skip(sigma) z."""
  config, parts = _smoke_parts()
  shape = tuple(config.data.image_shape)
  z = jax.random.normal(jax.random.key(0), (4, *shape)) * 3.0
  sigma = jnp.array([0.01, 0.5, 2.0, 80.0])
  denoised = standard_denoise(
    parts, z, sigma, jnp.array([0, 1, 2, 10]), sigma_data=0.5
  )
  expected = diffusion.c_skip(sigma)[:, None, None, None] * z
  np.testing.assert_array_equal(np.asarray(denoised), np.asarray(expected))
  tokens = parts["stem"](z)
  cond = jnp.ones((4, config.model.width))
  np.testing.assert_array_equal(
    np.asarray(parts["layers"](tokens, cond)), np.asarray(tokens)
  )


def test_position_table_is_a_constant_not_a_parameter():
  _, parts = _smoke_parts()
  names = jax.tree_util.tree_flatten_with_path(nnx.state(parts["stem"]))[0]
  assert all("position" not in jax.tree_util.keystr(p) for p, _ in names)
  assert len(jax.tree.leaves(nnx.state(parts["stem"]))) == 2  # kernel, bias


def _reference_posemb(width, grid):
  """The published formula, written out independently with numpy."""
  quarter = width // 4
  omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
  rows = []
  for r in range(grid):
    for c in range(grid):
      col_part = np.concatenate([np.sin(c * omega), np.cos(c * omega)])
      row_part = np.concatenate([np.sin(r * omega), np.cos(r * omega)])
      rows.append(np.concatenate([col_part, row_part]))
  return np.stack(rows)


def test_position_table_values():
  table = np.asarray(embed.sincos_position_embedding_2d(4, 16))
  assert table.shape == (16, 16)
  np.testing.assert_allclose(table, _reference_posemb(16, 4), atol=1e-6)
  # Token 0 (row 0, column 0): sin 0 = 0 and cos 0 = 1 in both halves.
  np.testing.assert_array_equal(table[0], [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4)


def test_unpatchify_inverts_patchify():
  x = jax.random.normal(jax.random.key(1), (2, 8, 12, 3))
  tokens = embed.patchify(x, 4)
  assert tokens.shape == (2, 6, 48)
  np.testing.assert_array_equal(embed.unpatchify(tokens, 4, 8, 12), x)


def test_initialisers_follow_the_reference():
  """Xavier-uniform with the fused-qkv and conv fans; N(0, 0.02) tables."""
  config = _config("S/2")
  config.model.num_layers = 1
  with config.unlocked():
    config.method = "e2e"
    config.blocks.num_blocks = 1
  model = families.get("dit").build(config).model
  layer = model.blocks[0]["layers"].layers[0]
  qkv = np.asarray(layer.attention.qkv.kernel[...])
  bound = np.sqrt(6 / (384 + 3 * 384))
  assert qkv.shape == (384, 1152)
  assert np.abs(qkv).max() <= bound
  assert np.abs(qkv).max() > 0.99 * bound
  np.testing.assert_allclose(qkv.std(), bound / np.sqrt(3), rtol=0.02)
  patch = np.asarray(model.shared["stem"].patch_embed.proj.kernel[...])
  assert patch.shape == (2 * 2 * 4, 384)  # fans p*p*C and width, as a conv.
  np.testing.assert_allclose(patch.std(), np.sqrt(2 / (16 + 384)), rtol=0.05)
  assert not np.any(np.asarray(layer.attention.qkv.bias[...]))
  assert not np.any(np.asarray(layer.adaln.linear.kernel[...]))
  labels = np.asarray(model.shared["label_embed"].table[...])
  assert labels.shape == (1001, 384)  # 1,000 classes and the null class.
  np.testing.assert_allclose(labels.std(), 0.02, rtol=0.02)
  assert not np.any(np.asarray(model.shared["readout"].linear.kernel[...]))
