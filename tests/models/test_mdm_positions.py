"""`model.positions` of the token DiT (models.mdm): "learned" (the
position table, as before the field) or "rotary" (RoPE on q and k in every
layer, no position parameter), through the family's config, both arms,
the dense and chunked attention paths, and runs saved before the field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_params import (
  assert_trees_close,
  block_loss_and_gradients,
  randomize,
)
from saved_runs import reread_as_saved

from configs import mdm_pydocs
from dblocks_jax import families
from dblocks_jax.errors import ConfigError
from dblocks_jax.families import mdm as mdm_family
from dblocks_jax.models import mdm
from dblocks_jax.nn import attention, rope
from dblocks_jax.tasks.masked_diffusion import MaskedDiffusion

TINY = dict(num_layers=2, width=16, num_heads=2, max_seq_len=8)


def _parts(spec: mdm.MDMConfig, seed: int = 0, *, random: bool = True):
  """The model's parts {stem, noise_embed, readout, layers}; `random`:
  random kernels and tables (a fresh readout is zero)."""
  rngs = nnx.Rngs(0)
  parts = {
    **mdm.make_shell(spec, rngs),
    "layers": mdm.make_layers(spec, spec.num_layers, rngs),
  }
  if random:
    for i, name in enumerate(sorted(parts)):
      randomize(parts[name], seed + i)
  return parts


def _logits(parts, tokens, t=0.5):
  """tokens [batch, length] -> logits [batch, length, 27]."""
  task = MaskedDiffusion(vocab_size=27)
  return task.logits(parts, jnp.asarray(tokens), jnp.full((len(tokens),), t))


def _params(parts) -> dict:
  """{"part/path": array} of every parameter."""
  params = {}
  for name, part in parts.items():
    flat = nnx.state(part, nnx.Param).flat_state()
    params.update({"/".join(map(str, (name, *k))): v.value for k, v in flat})
  return params


def _tokens(batch: int, length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 28, (batch, length))


# ----- The model --------------------------------------------------------------


def test_rotary_forward_has_the_logits_shape_and_is_finite():
  spec = mdm.MDMConfig(**TINY, positions="rotary")
  parts = _parts(spec)
  logits = _logits(parts, _tokens(3, 8))
  assert logits.shape == (3, 8, 27) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all() and np.abs(logits).max() > 0
  # No table bounds the length: longer than max_seq_len runs too.
  assert _logits(parts, _tokens(2, 12)).shape == (2, 12, 27)


def test_rotary_has_no_position_parameter():
  learned = _params(_parts(mdm.MDMConfig(**TINY), random=False))
  rotary = _params(
    _parts(mdm.MDMConfig(**TINY, positions="rotary"), random=False)
  )
  assert [p for p in learned if "positions" in p] == ["stem/positions"]
  assert not [p for p in rotary if "positions" in p]
  assert set(rotary) == set(learned) - {"stem/positions"}
  count = sum(x.size for x in rotary.values())
  spec = mdm.MDMConfig(**TINY, positions="rotary")
  assert count == mdm.param_count(spec)
  assert count == mdm.param_count(mdm.MDMConfig(**TINY)) - 8 * 16


def test_rotary_scores_depend_on_relative_position_only(monkeypatch):
  """Every token the same ([MASK]) and no position table: the first
  layer's queries and keys are the same at every position before RoPE, so
  q_i . k_j is a function of i - j (Toeplitz) and, only because RoPE
  rotates them, not a constant. The learned table breaks the Toeplitz
  form; without RoPE the scores would all be equal."""
  seen = []
  dense = jax.nn.dot_product_attention

  def spy(q, k, v, **kw):
    seen.append((q, k))
    return dense(q, k, v, **kw)

  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  length = 8
  masks = np.full((1, length), 27)
  for positions, toeplitz in (("rotary", True), ("learned", False)):
    seen.clear()
    spec = mdm.MDMConfig(**TINY, positions=positions)
    _logits(_parts(spec), masks)
    q, k = seen[0]  # The first layer's, [1, length, heads, head_dim].
    scores = np.asarray(jnp.einsum("bqhd,bkhd->bhqk", q, k))[0]
    shifted = np.allclose(scores[:, 1:, 1:], scores[:, :-1, :-1], atol=1e-5)
    assert shifted == toeplitz, positions
    assert np.ptp(scores, axis=(1, 2)).min() > 1e-3  # Each head's.


def test_rotary_breaks_permutation_equivariance():
  """Without a position table, only RoPE tells positions apart: permuting
  the tokens must not just permute the logits."""
  spec = mdm.MDMConfig(**TINY, positions="rotary")
  parts = _parts(spec)
  tokens = _tokens(1, 8, seed=3)
  order = np.random.default_rng(1).permutation(8)
  logits = np.asarray(_logits(parts, tokens))
  permuted = np.asarray(_logits(parts, tokens[:, order]))
  assert not np.allclose(permuted, logits[:, order], atol=1e-4)


def test_learned_is_the_model_before_the_field():
  """positions="learned" is the default: the same parameters (the same
  draws) and the same logits, bit for bit; the stem adds the table's rows."""
  before = _parts(mdm.MDMConfig(**TINY))
  learned = _parts(mdm.MDMConfig(**TINY, positions="learned"))
  a, b = _params(before), _params(learned)
  assert a.keys() == b.keys()
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg=path)
  tokens = _tokens(2, 6)
  np.testing.assert_array_equal(
    _logits(before, tokens), _logits(learned, tokens)
  )
  stem = learned["stem"]
  np.testing.assert_array_equal(
    stem(jnp.asarray(tokens)),
    stem.tokens[...][tokens] + stem.positions[...][:6],
  )
  # The recipes use rotary positions; the model's own default is learned.
  assert mdm_pydocs.get_config().model.positions == "rotary"
  assert mdm.MDMConfig().positions == "learned"
  assert mdm.MDMConfig().rope_theta is None


@pytest.mark.parametrize("kind", attention.ATTENTION_KINDS)
def test_self_attention_rotary_is_the_same_on_every_path(kind):
  """The dense forms and the chunked path rotate q and k alike."""
  x = jax.random.normal(jax.random.key(0), (2, 10, 16))
  outputs = {}
  for impl in ("dense", "chunked"):
    layer = attention.SelfAttention(
      16,
      2,
      attention_dropout=0.0,
      dropout=0.0,
      kind=kind,
      attention_impl=impl,
      rope_theta=rope.DEFAULT_THETA,
      rngs=nnx.Rngs(0),
    )
    outputs[impl] = randomize(layer, 1)(x)
  plain = attention.SelfAttention(
    16, 2, attention_dropout=0.0, dropout=0.0, kind=kind, rngs=nnx.Rngs(0)
  )
  randomize(plain, 1)
  np.testing.assert_allclose(
    outputs["chunked"], outputs["dense"], rtol=1e-5, atol=1e-6
  )
  assert not np.allclose(plain(x), outputs["dense"], atol=1e-4)


# ----- The family and its configs ---------------------------------------------


def _smoke(positions: str = "rotary", **model):
  config = mdm_pydocs.get_config("smoke")
  config.model.positions = positions
  config.model.update(model)
  return config


@pytest.mark.parametrize("method", ["dblocks", "e2e"])
def test_rotary_dense_and_chunked_give_the_same_loss_and_gradients(method):
  results = {}
  for impl in ("dense", "chunked"):
    config = _smoke(attention_impl=impl)
    config.method = method
    results[impl] = block_loss_and_gradients(config)
  (dense_loss, dense_grads), (loss, grads) = (
    results["dense"],
    results["chunked"],
  )
  assert np.isfinite(float(loss))
  assert float(loss) == pytest.approx(float(dense_loss), rel=1e-5)
  assert_trees_close(grads, dense_grads)


def test_both_arms_build_rotary_without_a_position_table():
  for method in ("dblocks", "e2e"):
    config = _smoke()
    config.method = method
    model = families.get("mdm").build(config).model
    stems = [g["stem"] for g in (model.shared, *model.blocks) if "stem" in g]
    assert stems and all(not s.max_seq_len for s in stems)
    assert all(
      layer.attention.rope_theta == mdm.ROPE_THETA
      for g in (model.shared, *model.blocks)
      if "layers" in g
      for layer in g["layers"].layers
    )


def test_rotary_lets_sequences_exceed_max_seq_len():
  config = _smoke(max_seq_len=8)
  assert config.data.seq_len > 8
  assert mdm_family.model_config(config).positions == "rotary"
  with pytest.raises(ConfigError, match="model.max_seq_len=8"):
    mdm_family.model_config(_smoke("learned", max_seq_len=8))


def test_an_unknown_positions_names_the_field_and_the_choices():
  config = _smoke("alibi")
  with pytest.raises(ConfigError) as error:
    families.get("mdm").build(config)
  message = str(error.value)
  assert message.startswith("model.positions='alibi' is unknown")
  assert "'learned'" in message and "'rotary'" in message
  with pytest.raises(ValueError, match="positions='alibi'"):
    mdm.MDMConfig(positions="alibi")


def test_runs_saved_before_the_field_read_as_learned(tmp_path):
  config = mdm_pydocs.get_config("smoke")
  old = reread_as_saved(
    config, tmp_path, lambda payload: payload["model"].pop("positions")
  )
  assert old.model.positions == "learned"
  config.model.positions = "learned"
  assert mdm_family.model_config(old) == mdm_family.model_config(config)
