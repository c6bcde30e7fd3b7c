"""Tests of dblocks_jax.nn, dblocks_jax.models.vit and the objective."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vit_cifar100
from dblocks_jax import diffusion, families
from dblocks_jax.families.vit import model_config
from dblocks_jax.models import vit
from dblocks_jax.nn import adaln, attention, embed, layers
from dblocks_jax.tasks import DiffusionClassification, Sampler

IMAGE_SHAPE = (8, 8, 3)
NUM_CLASSES = 5
SILU_MIN = -0.2785  # min_x x sigmoid(x) = -0.27846 at x = -1.2785.


def _config(**model) -> vit.ViTConfig:
  """A tiny ViT: width 24, 2 heads, MLP 48, cond 8, 3 layers, patch 4."""
  tiny = dict(
    num_layers=3,
    width=24,
    num_heads=2,
    mlp_dim=48,
    patch_size=4,
    cond_dim=8,
    frequency_dim=32,
  )
  return vit.ViTConfig(**{**tiny, **model})


def _parts(config, *, seed=0, num_layers=1, trainable=True):
  rngs = nnx.Rngs(seed)
  parts = vit.make_shell(config, IMAGE_SHAPE, NUM_CLASSES, rngs)
  parts["layers"] = vit.make_layers(config, num_layers, rngs)
  parts["targets"] = vit.make_targets(
    config, NUM_CLASSES, trainable=trainable, rngs=rngs
  )
  return parts


def _perturb(module, seed, scale=0.3):
  """Adds N(0, scale^2) to every parameter (zero-initialised ones too)."""
  rng = np.random.default_rng(seed)
  state = jax.tree.map(
    lambda x: jnp.asarray(
      np.asarray(x) + scale * rng.standard_normal(x.shape, np.float32)
    ),
    nnx.state(module, nnx.Param),
  )
  nnx.update(module, state)


def _perturb_all(parts, seed=0):
  for i, module in enumerate(parts.values()):
    _perturb(module, seed + i)


def _normal(seed, shape, scale=1.0):
  rng = np.random.default_rng(seed)
  return scale * rng.standard_normal(shape, np.float32)


# One compilation per input structure, shared by the tests (eager dispatch
# compiles every primitive separately, which is much slower on a CPU).
_jit_denoise = nnx.jit(vit.denoise, static_argnames=("sigma_data",))


def _denoise(parts, images, z, sigma, *, sigma_data, rngs=None):
  """Jitted vit.denoise; rngs=None traces once, passed or not."""
  return _jit_denoise(parts, images, z, sigma, sigma_data=sigma_data, rngs=rngs)


_call = nnx.jit(lambda module, *args, **kwargs: module(*args, **kwargs))


def _param_count(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


# ---------------------------------------------------------------- embeddings


def test_patchify_shape_and_row_major_patches():
  images = np.arange(2 * 8 * 8 * 1, dtype=np.float32).reshape(2, 8, 8, 1)
  patches = embed.patchify(images, 2)
  assert patches.shape == (2, 16, 4)
  for i in range(4):
    for j in range(4):
      region = images[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, :]
      np.testing.assert_array_equal(patches[:, 4 * i + j], region.reshape(2, 4))
  # First patch of image 0: pixels (0,0), (0,1), (1,0), (1,1).
  np.testing.assert_array_equal(patches[0, 0], [0, 1, 8, 9])


def test_patchify_channels_are_innermost():
  images = _normal(0, (1, 4, 6, 3))
  patches = embed.patchify(images, 2)
  assert patches.shape == (1, 6, 12)
  np.testing.assert_array_equal(
    patches[0, 4], images[0, 2:4, 2:4, :].reshape(12)
  )
  with pytest.raises(ValueError, match="divisible"):
    embed.patchify(images, 4)


def test_patch_embed_is_a_strided_convolution():
  module = embed.PatchEmbed(4, 3, 24, rngs=nnx.Rngs(0))
  _perturb(module, 1)
  images = _normal(2, (4,) + IMAGE_SHAPE)
  kernel = module.proj.kernel[...].reshape(4, 4, 3, 24)  # HWIO.
  conv = jax.lax.conv_general_dilated(
    images,
    kernel,
    window_strides=(4, 4),
    padding="VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  expected = conv.reshape(4, 4, 24) + module.proj.bias[...]
  np.testing.assert_allclose(module(images), expected, rtol=1e-5, atol=1e-6)


def test_sinusoidal_embedding_values():
  t = np.array([0.0, 0.5, -1.3], np.float32)
  emb = embed.sinusoidal_embedding(t, 8)
  assert emb.shape == (3, 8)
  freqs = 10000.0 ** (-np.arange(4) / 4)
  args = np.asarray(t)[:, None] * freqs
  np.testing.assert_allclose(emb[:, :4], np.cos(args), rtol=1e-6)
  np.testing.assert_allclose(emb[:, 4:], np.sin(args), atol=1e-7)
  np.testing.assert_array_equal(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
  # Odd widths are zero padded.
  odd = embed.sinusoidal_embedding(t, 9)
  assert odd.shape == (3, 9)
  np.testing.assert_array_equal(odd[:, :8], emb)
  np.testing.assert_array_equal(odd[:, 8], 0.0)


def test_target_table_rows_are_unit_norm():
  table = embed.TargetTable(5, 24, trainable=True, rngs=nnx.Rngs(3))
  rows = table.normalized()
  assert rows.shape == (5, 24)
  np.testing.assert_allclose(np.linalg.norm(rows, axis=-1), 1.0, rtol=1e-6)
  # Rows point the same way as the raw table (N(0, 0.02) initialised).
  raw = np.asarray(table.table[...])
  assert 0.005 < float(np.std(raw)) < 0.05
  np.testing.assert_allclose(
    rows * np.linalg.norm(raw, axis=-1, keepdims=True), raw, rtol=1e-5
  )
  labels = np.array([4, 0, 4])
  np.testing.assert_array_equal(table(labels), rows[labels])


def test_target_table_trainable_is_param_fixed_is_not():
  trained = embed.TargetTable(5, 24, trainable=True, rngs=nnx.Rngs(0))
  fixed = embed.TargetTable(5, 24, trainable=False, rngs=nnx.Rngs(0))
  assert isinstance(trained.table, nnx.Param)
  assert isinstance(fixed.table, embed.FixedTable)
  assert not isinstance(fixed.table, nnx.Param)
  _, params, rest = nnx.split(trained, nnx.Param, ...)
  assert len(jax.tree.leaves(params)) == 1 and not jax.tree.leaves(rest)
  _, params, rest = nnx.split(fixed, nnx.Param, ...)
  assert not jax.tree.leaves(params) and len(jax.tree.leaves(rest)) == 1
  # Same seed, same table, whatever the mode; another seed differs.
  np.testing.assert_array_equal(trained.table[...], fixed.table[...])
  other = embed.TargetTable(5, 24, trainable=False, rngs=nnx.Rngs(1))
  assert not np.allclose(other.table[...], fixed.table[...])


# --------------------------------------------------------- layers, attention


@pytest.mark.parametrize("modulation", adaln.MODULATIONS)
def test_fresh_adaln_zero_layer_is_identity(modulation):
  layer = layers.TransformerLayer(
    24,
    2,
    48,
    cond_dim=8,
    dropout=0.1,
    attention_dropout=0.1,
    modulation=modulation,
    rngs=nnx.Rngs(0),
  )
  x = _normal(1, (4, 5, 24))
  cond = _normal(2, (4, 8), scale=3.0)
  np.testing.assert_array_equal(layer(x, cond), x)
  # Once the adaLN weights move, it is not the identity any more.
  _perturb(layer.adaln, 5)
  assert not np.allclose(layer(x, cond), x, atol=1e-3)


def test_unconditioned_layer_is_not_identity():
  layer = layers.TransformerLayer(24, 2, 48, cond_dim=None, rngs=nnx.Rngs(0))
  assert layer.adaln is None
  x = _normal(1, (4, 5, 24))
  out = layer(x)
  assert out.shape == x.shape
  assert float(np.max(np.abs(out - x))) > 1e-3


def test_adaln_official_is_bounded_below_dit_is_not():
  cond = _normal(0, (4, 8), scale=3.0)
  outs = {}
  for mode in adaln.MODULATIONS:
    module = adaln.AdaLNModulation(8, 24, 6, mode=mode, rngs=nnx.Rngs(0))
    # A fresh module outputs exact zeros: AdaLN-Zero.
    for chunk in module(cond):
      assert chunk.shape == (4, 24)
      np.testing.assert_array_equal(chunk, 0.0)
    _perturb(module, 1, scale=1.0)
    outs[mode] = np.stack(module(cond))
  assert float(outs["official"].min()) >= SILU_MIN
  assert float(outs["dit"].min()) < SILU_MIN
  # Same weights: official = SiLU(dit).
  np.testing.assert_allclose(
    outs["official"], jax.nn.silu(outs["dit"]), rtol=1e-6, atol=1e-7
  )
  with pytest.raises(ValueError, match="modulation"):
    adaln.AdaLNModulation(8, 16, 2, mode="film", rngs=nnx.Rngs(0))


def test_modulate_broadcasts_over_tokens():
  x = _normal(0, (4, 5, 24))
  shift, scale = _normal(1, (4, 24)), _normal(2, (4, 24))
  out = adaln.modulate(x, shift, scale)
  np.testing.assert_allclose(
    out, x * (1 + scale[:, None]) + shift[:, None], rtol=1e-6
  )
  np.testing.assert_allclose(
    adaln.modulate(x[:, 0], shift, scale), out[:, 0], rtol=1e-6
  )


def _attention(seed=0):
  module = attention.SelfAttention(
    24, 2, attention_dropout=0.0, dropout=0.0, rngs=nnx.Rngs(seed)
  )
  _perturb(module, seed + 1)
  return module


def test_masked_token_ignores_other_tokens():
  module = _attention()
  x = _normal(0, (4, 5, 24))
  y = x.copy()
  y[:, 1:] = _normal(1, (4, 4, 24))
  # Token 0 attends only to itself; the others attend to everything.
  mask = np.ones((1, 1, 5, 5), bool)
  mask[..., 0, 1:] = False
  out_x, out_y = _call(module, x, mask=mask), _call(module, y, mask=mask)
  np.testing.assert_allclose(out_x[:, 0], out_y[:, 0], rtol=1e-6, atol=1e-7)
  assert not np.allclose(out_x[:, 1:], out_y[:, 1:], atol=1e-4)
  # Without masking (an all-True mask), token 0 does see the others.
  full = np.ones_like(mask)
  seen_x, seen_y = _call(module, x, mask=full), _call(module, y, mask=full)
  assert not np.allclose(seen_x[:, 0], seen_y[:, 0], atol=1e-4)
  # A self-only token's output is out(v) of its own value vector.
  v = module.qkv(x[:, 0])[:, 48:]
  np.testing.assert_allclose(out_x[:, 0], module.out(v), rtol=1e-5, atol=1e-6)


def test_causal_mask_hides_the_future():
  module = _attention(3)
  x = _normal(0, (4, 5, 24))
  y = x.copy()
  y[:, 3:] = _normal(1, (4, 2, 24))
  causal = np.tril(np.ones((5, 5), bool))[None, None]
  out_x, out_y = _call(module, x, mask=causal), _call(module, y, mask=causal)
  np.testing.assert_allclose(out_x[:, :3], out_y[:, :3], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out_x[:, 3:], out_y[:, 3:], atol=1e-4)


def test_dot_product_attention_computes_the_einsum_attention():
  einsum = _attention(5)
  fused = attention.SelfAttention(
    24,
    2,
    attention_dropout=0.0,
    dropout=0.0,
    kind="dot_product",
    rngs=nnx.Rngs(0),
  )
  nnx.update(fused, nnx.state(einsum))
  x = _normal(0, (3, 5, 24))
  causal = np.tril(np.ones((5, 5), bool))[None, None]
  for mask in (None, causal):
    np.testing.assert_allclose(
      _call(fused, x, mask=mask),
      _call(einsum, x, mask=mask),
      rtol=1e-5,
      atol=1e-6,
    )
  with pytest.raises(ValueError, match="needs kind='einsum'"):
    attention.SelfAttention(
      24,
      2,
      attention_dropout=0.1,
      dropout=0.0,
      kind="dot_product",
      rngs=nnx.Rngs(0),
    )


def test_layer_stack_remat_matches_plain():
  kw = dict(width=24, num_heads=2, mlp_dim=48, cond_dim=8)
  plain = layers.LayerStack(2, rngs=nnx.Rngs(0), **kw)
  remat = layers.LayerStack(2, remat=True, rngs=nnx.Rngs(0), **kw)
  _perturb(plain, 1)
  _perturb(remat, 1)
  x, cond = _normal(2, (4, 5, 24)), _normal(3, (4, 8))
  out = _call(plain, x, cond)
  np.testing.assert_allclose(_call(remat, x, cond), out, rtol=1e-5, atol=1e-6)
  assert not np.allclose(out, x, atol=1e-3)


# -------------------------------------------------------- DiffusionBlocks ViT


def _inputs(seed=0):
  images = _normal(seed, (4,) + IMAGE_SHAPE)
  z = _normal(seed + 1, (4, 24), scale=0.5)
  sigma = np.array([0.01, 0.4, 30.0, 2.0], np.float32)
  return images, z, sigma


def test_denoise_shapes_and_fresh_model_values():
  parts = _parts(_config())
  images, z, sigma = _inputs()
  logits, denoised = _denoise(parts, images, z, sigma, sigma_data=0.5)
  assert logits.shape == (4, NUM_CLASSES)
  assert denoised.shape == (4, 24)
  # Zero-initialised classifier and adaLN: the logits are exactly zero.
  np.testing.assert_array_equal(logits, 0.0)
  # Identity layers: F = LN(token 0) = LN(c_in z + position_0), and
  # D = c_skip z + c_out F (EDM, sigma_data = 0.5).
  s = sigma[:, None].astype(np.float64)
  c_skip = 0.25 / (s**2 + 0.25)
  c_out = 0.5 * s / np.sqrt(s**2 + 0.25)
  c_in = 1 / np.sqrt(s**2 + 0.25)
  token0 = c_in * z + np.asarray(parts["stem"].position[0, 0])
  mean = token0.mean(-1, keepdims=True)
  var = token0.var(-1, keepdims=True)
  f = (token0 - mean) / np.sqrt(var + 1e-12)
  expected = c_skip * z + c_out * f
  np.testing.assert_allclose(denoised, expected, rtol=1e-5, atol=1e-6)
  # So at init D does not depend on the image.
  other = _normal(9, images.shape)
  _, denoised_other = _denoise(parts, other, z, sigma, sigma_data=0.5)
  np.testing.assert_array_equal(denoised_other, denoised)


def test_trained_denoiser_depends_on_image_and_sigma():
  parts = _parts(_config())
  _perturb_all(parts)
  images, z, sigma = _inputs()
  logits, denoised = _denoise(parts, images, z, sigma, sigma_data=0.5)
  assert np.all(np.abs(np.asarray(logits)) > 0)
  logits_other, denoised_other = _denoise(
    parts, _normal(9, images.shape), z, sigma, sigma_data=0.5
  )
  assert not np.allclose(logits, logits_other, atol=1e-4)
  assert not np.allclose(denoised, denoised_other, atol=1e-4)
  # Per-example: permuting the batch permutes the outputs.
  perm = np.array([2, 0, 3, 1])
  logits_p, denoised_p = _denoise(
    parts, images[perm], z[perm], sigma[perm], sigma_data=0.5
  )
  np.testing.assert_allclose(logits_p, logits[perm], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(denoised_p, denoised[perm], rtol=1e-4, atol=1e-5)
  # And on sigma: the same inputs at other noise levels differ.
  logits_s, _ = _denoise(parts, images, z, sigma[perm], sigma_data=0.5)
  assert not np.allclose(logits_s, logits, atol=1e-4)


def test_denoise_dropout():
  config = _config()
  assert config.dropout > 0 and config.attention_dropout > 0
  parts = _parts(config)
  _perturb_all(parts)
  images, z, sigma = _inputs()

  def run(rngs):
    return _denoise(parts, images, z, sigma, sigma_data=0.5, rngs=rngs)

  a, b = run(None), run(None)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  k1, k1_again, k2 = (
    run(nnx.Rngs(dropout=1)),
    run(nnx.Rngs(dropout=1)),
    run(nnx.Rngs(dropout=2)),
  )
  for x, y, w in zip(k1, k1_again, k2, strict=True):
    np.testing.assert_array_equal(x, y)
    assert not np.allclose(x, w, atol=1e-4)
  assert not np.allclose(k1[0], a[0], atol=1e-4)


# ------------------------------------------------------------------ baseline


def test_baseline_vit_logits():
  config = _config()
  model = vit.BaselineViT(config, IMAGE_SHAPE, NUM_CLASSES, rngs=nnx.Rngs(0))
  apply = nnx.jit(lambda model, images: model(images))
  images = _normal(0, (4,) + IMAGE_SHAPE)
  logits = apply(model, images)
  assert logits.shape == (4, NUM_CLASSES)
  # Trunc-normal head: not zero at init, unlike the DiffusionBlocks readout.
  assert float(np.min(np.abs(logits))) > 0
  other = apply(model, _normal(1, images.shape))
  assert not np.allclose(logits, other, atol=1e-5)
  # Deterministic without rngs.
  np.testing.assert_array_equal(apply(model, images), logits)


def _layer_params(width, mlp_dim, cond_dim=None):
  layer_norms = 2 * (2 * width)
  qkv = width * 3 * width + 3 * width
  out = width * width + width
  mlp = width * mlp_dim + mlp_dim + mlp_dim * width + width
  adaln_params = 0 if cond_dim is None else cond_dim * 6 * width + 6 * width
  return layer_norms + qkv + out + mlp + adaln_params


def test_cifar100_baseline_parameter_count():
  config = model_config(vit_cifar100.get_config())
  model = nnx.eval_shape(
    lambda: vit.BaselineViT(config, (32, 32, 3), 100, rngs=nnx.Rngs(0))
  )
  width, layers_, classes = 128, 12, 100
  patch_embed = 4 * 4 * 3 * width + width
  cls = width
  position = (64 + 1) * width
  layer_norms = 2 * (2 * width)  # Two affine LayerNorms.
  qkv = 128 * 384 + 384
  attention_out = 128 * 128 + 128
  mlp = 128 * 3072 + 3072 + 3072 * 128 + 128
  per_layer = layer_norms + qkv + attention_out + mlp
  final_norm = 2 * width
  head = width * classes + classes
  expected = (
    patch_embed + cls + position + layers_ * per_layer + final_norm + head
  )
  assert per_layer == _layer_params(128, 3072) == 856_192
  assert expected == 10_302_180
  assert _param_count(model) == expected


def test_cifar100_diffusion_blocks_parameter_count():
  config = model_config(vit_cifar100.get_config())
  width, classes, cond = 128, 100, 128 // 6
  assert config.cond_dim == cond == 21

  def build():
    rngs = nnx.Rngs(0)
    parts = vit.make_shell(config, (32, 32, 3), classes, rngs)
    parts["targets"] = vit.make_targets(
      config, classes, trainable=True, rngs=rngs
    )
    # Blocks are alike; one of the three is enough to count.
    block = vit.make_layers(config, 4, rngs)
    return nnx.List([*parts.values(), block])

  counts = [_param_count(m) for m in nnx.eval_shape(build)]
  stem = 4 * 4 * 3 * width + width + 65 * width
  noise_embed = 256 * cond + cond + cond * cond + cond
  readout = (
    2 * width + (cond * 2 * width + 2 * width) + width * classes + classes
  )
  targets = classes * width
  block = 4 * _layer_params(width, 3072, cond)
  assert counts[:4] == [stem, noise_embed, readout, targets]
  assert counts[4] == block


# ----------------------------------------------------------------- objective


def _batch(batch=4, seed=0):
  return {
    "image": _normal(seed, (batch,) + IMAGE_SHAPE),
    "label": np.arange(batch) % NUM_CLASSES,
  }


@pytest.mark.parametrize("max_weight", [0.0, 20.0])
def test_loss_of_fresh_model_is_weighted_log_num_classes(max_weight):
  parts = _parts(_config())
  objective = DiffusionClassification(_denoise, max_weight=max_weight)
  batch = _batch()
  sigma = np.array([0.002, 0.3, 7.0, 80.0], np.float32)
  loss, metrics = objective.loss(parts, batch, sigma, jax.random.key(0))
  assert loss.shape == () and np.isfinite(float(loss))
  assert set(metrics) == {"ce", "accuracy"}
  log_c = math.log(NUM_CLASSES)
  np.testing.assert_allclose(metrics["ce"], log_c, rtol=1e-6)
  # argmax of all-zero logits is class 0.
  expected_accuracy = np.mean(np.asarray(batch["label"]) == 0)
  np.testing.assert_allclose(metrics["accuracy"], expected_accuracy)
  weight = (sigma**2 + 0.25) / (0.25 * sigma**2)
  if max_weight:
    weight = np.minimum(weight, max_weight)
  np.testing.assert_allclose(loss, np.mean(weight) * log_c, rtol=1e-5)
  if max_weight:
    assert float(loss) <= max_weight * log_c


def test_loss_eval_mode_is_deterministic_train_mode_is_not():
  parts = _parts(_config())
  _perturb_all(parts)
  objective = DiffusionClassification(_denoise)
  batch, sigma = _batch(), np.full((4,), 0.5, np.float32)
  key = jax.random.key(3)
  eval_a, _ = objective.loss(parts, batch, sigma, key, train=False)
  eval_b, _ = objective.loss(parts, batch, sigma, key, train=False)
  assert float(eval_a) == float(eval_b)
  train_a, _ = objective.loss(parts, batch, sigma, key)
  train_b, _ = objective.loss(parts, batch, sigma, key)
  assert float(train_a) == float(train_b)  # Same key, same dropout.
  assert float(train_a) != float(eval_a)


class _Recorder:
  """Wraps vit.denoise and a block -> parts map; records every call.

  The parts are perturbed, so that logits are not zero.
  """

  def __init__(self, num_blocks):
    config = _config()
    shared = _parts(config)
    _perturb_all(shared)
    rngs = nnx.Rngs(10)
    self.blocks = []
    for b in range(num_blocks):
      block_layers = vit.make_layers(config, 1, rngs)
      _perturb(block_layers, 100 + b)
      self.blocks.append({**shared, "layers": block_layers, "block": b})
    self.requested = []
    self.calls = []
    self.states = []
    self.logits = []

  def parts_for_block(self, block):
    self.requested.append(block)
    return self.blocks[block]

  def denoise(self, parts, images, z, sigma, **kw):
    self.calls.append(
      (parts["block"], float(sigma[0]), bool(np.all(images == 0)))
    )
    sigma, images = np.asarray(sigma), np.asarray(images)
    assert np.all(sigma == sigma[0])
    parts = {k: v for k, v in parts.items() if k != "block"}
    logits, denoised = _denoise(parts, images, z, sigma, **kw)
    self.states.append(np.asarray(z))
    self.logits.append(np.asarray(logits))
    return logits, denoised


@pytest.mark.parametrize(
  ("num_steps", "method"), [(3, "euler"), (7, "euler"), (4, "heun")]
)
def test_classify_routes_every_grid_point(num_steps, method):
  recorder = _Recorder(3)
  objective = DiffusionClassification(recorder.denoise)
  bounds = diffusion.block_boundaries(3)
  sigmas = diffusion.cdf_sigmas(num_steps)
  blocks = diffusion.route(sigmas, bounds)
  images = _batch()["image"]
  logits = objective.predict(
    recorder.parts_for_block,
    {"image": images},
    jax.random.key(0),
    sampler=Sampler(sigmas, blocks, method),
  )
  assert logits.shape == (4, NUM_CLASSES)
  if method == "euler":
    indices = list(range(num_steps))
  else:
    indices = [0] + [j for i in range(1, num_steps) for j in (i, i)]
  assert len(recorder.calls) == len(indices)
  for (block, sigma, zero_image), i in zip(
    recorder.calls, indices, strict=True
  ):
    assert block == diffusion.route(sigmas[i], bounds)
    assert sigma == pytest.approx(sigmas[i], rel=1e-6)
    assert not zero_image
  if num_steps == 3:
    assert [c[0] for c in recorder.calls] == [0, 1, 2]
  # Every block it asked for was one the route names.
  assert set(recorder.requested) <= set(blocks.tolist())
  # The logits are the last evaluation's, at sigma_min, on the last block.
  assert recorder.calls[-1][:2] == (2, pytest.approx(0.002))
  np.testing.assert_array_equal(logits, recorder.logits[-1])
  assert np.all(np.abs(logits) > 0)


@pytest.mark.parametrize(
  ("normalized_table", "estimate"),
  [(False, "soft"), (True, "soft"), (True, "hard")],
)
def test_classify_euler_uses_the_configured_estimate(
  normalized_table, estimate
):
  recorder = _Recorder(3)
  objective = DiffusionClassification(
    recorder.denoise, normalized_table=normalized_table, estimate=estimate
  )
  sigmas = diffusion.cdf_sigmas(5)
  blocks = diffusion.route(sigmas, diffusion.block_boundaries(3))
  objective.predict(
    recorder.parts_for_block,
    {"image": _batch()["image"]},
    jax.random.key(0),
    sampler=Sampler(sigmas, blocks),
  )
  # z_0 ~ N(0, sigma_max^2).
  assert recorder.states[0].shape == (4, 24)
  assert 60.0 < np.std(recorder.states[0]) < 100.0
  # Then z_{i+1} = Euler(z_i, D_i) with D_i = softmax(logits_i) @ E, where E
  # is the raw table (official) or its unit-norm rows.
  targets = recorder.blocks[0]["targets"]
  table = np.asarray(
    targets.normalized() if normalized_table else targets.table[...]
  )
  for i in range(len(sigmas) - 1):
    logits = recorder.logits[i].astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if estimate == "hard":  # The row of the argmax class.
      target = table[np.argmax(logits, -1)]
    else:
      target = probs @ table
    ratio = sigmas[i + 1] / sigmas[i]
    expected = ratio * recorder.states[i] + (1 - ratio) * target
    np.testing.assert_allclose(
      recorder.states[i + 1], expected, rtol=1e-4, atol=1e-5
    )


def test_classify_guidance_adds_unconditional_calls():
  recorder = _Recorder(3)
  objective = DiffusionClassification(recorder.denoise, guidance_scale=2.0)
  sigmas = diffusion.cdf_sigmas(3)
  blocks = diffusion.route(sigmas, diffusion.block_boundaries(3))
  logits = objective.predict(
    recorder.parts_for_block,
    {"image": _batch()["image"]},
    jax.random.key(0),
    sampler=Sampler(sigmas, blocks),
  )
  assert logits.shape == (4, NUM_CLASSES)
  zero_images = [c[2] for c in recorder.calls]
  assert zero_images == [False, True] * 3
  assert [c[0] for c in recorder.calls] == [0, 0, 1, 1, 2, 2]


def test_cls_readout_reads_a_clean_token():
  """readout_token="cls": F is read at a learned CLS token, not the label."""
  parts = _parts(_config(readout_token="cls"))
  stem = parts["stem"]
  num_patches = (IMAGE_SHAPE[0] // 4) * (IMAGE_SHAPE[1] // 4)
  assert stem.cls is not None
  assert stem.position.shape == (1, num_patches + 2, 24)  # CLS, label, P.
  images, z, sigma = _inputs()
  logits, denoised = _denoise(parts, images, z, sigma, sigma_data=0.5)
  np.testing.assert_array_equal(logits, 0.0)  # Zero-initialised head.
  # Identity layers: F = LN(cls + position_0) whatever z is.
  token0 = np.asarray(stem.cls[0, 0]) + np.asarray(stem.position[0, 0])
  f = (token0 - token0.mean()) / np.sqrt(token0.var() + 1e-12)
  s = sigma[:, None].astype(np.float64)
  expected = 0.25 / (s**2 + 0.25) * z + 0.5 * s / np.sqrt(s**2 + 0.25) * f
  np.testing.assert_allclose(denoised, expected, rtol=1e-5, atol=1e-6)
  # The label token still reaches F once the layers are not the identity.
  _perturb_all(parts)
  _, d1 = _denoise(parts, images, z, sigma, sigma_data=0.5)
  _, d2 = _denoise(parts, images, z + 1.0, sigma, sigma_data=0.5)
  assert not np.allclose(
    np.asarray(d1) - 0.25 / (s**2 + 0.25) * z,
    np.asarray(d2) - 0.25 / (s**2 + 0.25) * (z + 1.0),
  )


def test_unknown_readout_token_is_an_error():
  from dblocks_jax.errors import ConfigError

  with pytest.raises(ValueError, match="readout_token='mean'"):
    _config(readout_token="mean")
  config = vit_cifar100.get_config("smoke")
  config.model.readout_token = "mean"
  with pytest.raises(ConfigError, match="model.readout_token='mean'"):
    families.get("vit").build(config)
