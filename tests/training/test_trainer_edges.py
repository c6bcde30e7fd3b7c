"""The Trainer at a library user's edges.

A residual MLP written here, outside the package, trained through the
public API on scikit-learn's digits: a one-block model evaluated with the
default sampler, inference without the training optimizer (in a fresh
process), one default inference key, per-block optimizers, the checks of
bad batches, and progress on stderr.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dblocks_jax as db
from dblocks_jax.errors import NonFiniteLossError

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
WIDTH, CLASSES = 32, 10

# The model and data, as a user writes them (also run in a subprocess).
MODEL_SOURCE = '''
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sklearn.datasets import load_digits

import dblocks_jax as db

WIDTH, CLASSES = 32, 10


class Stem(nnx.Module):
  """Image [b, 8, 8, 1] and noisy label [b, WIDTH] -> h [b, WIDTH]."""

  def __init__(self, rngs):
    self.image = nnx.Linear(64, WIDTH, rngs=rngs)
    self.label = nnx.Linear(WIDTH, WIDTH, rngs=rngs)

  def __call__(self, images, token):
    return self.image(images.reshape(len(images), -1)) + self.label(token)


class Layer(nnx.Module):
  """A residual MLP layer, FiLM-conditioned on the noise level."""

  def __init__(self, rngs):
    self.norm = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.film = nnx.Linear(WIDTH, 2 * WIDTH, rngs=rngs)
    self.mlp = nnx.Linear(WIDTH, WIDTH, rngs=rngs)

  def __call__(self, h, cond):
    scale, shift = jnp.split(self.film(cond), 2, axis=-1)
    return h + self.mlp(jax.nn.gelu(self.norm(h) * (1 + scale) + shift))


def shell(rngs):
  return {
    "stem": Stem(rngs),
    "readout": nnx.LayerNorm(WIDTH, rngs=rngs),
    **db.DiffusionClassification.standard_parts(
      CLASSES, WIDTH, WIDTH, rngs=rngs
    ),
  }


def model(num_blocks, num_layers=2):
  plan = db.BlockPlan.create(
    db.EDM(), num_layers=num_layers, num_blocks=num_blocks
  )
  return plan, db.BlockwiseModel.build(plan, shell=shell, layer=Layer)


images, labels = load_digits(return_X_y=True)
images = (images / 16).reshape(-1, 8, 8, 1).astype(np.float32)
labels = labels.astype(np.int32)
TEST = {"image": images[1500:], "label": labels[1500:]}


def batches(seed=0, size=64):
  rng = np.random.default_rng(seed)
  while True:
    rows = rng.integers(0, 1500, size)
    yield {"image": images[rows], "label": labels[rows]}
'''
user = {}
exec(MODEL_SOURCE, user)  # The user's module, shared with the subprocess.
model, batches, TEST = user["model"], user["batches"], user["TEST"]


def _trainer(num_blocks=1, optimizer=None, **kwargs):
  plan, m = model(num_blocks)
  if optimizer is None:
    optimizer = optax.adamw(1e-3)
  task = db.DiffusionClassification()
  return db.Trainer(m, task, plan, optimizer, log_every=10, **kwargs)


# ----- One block, the default sampler ----------------------------------------


@pytest.fixture(scope="module")
def one_block():
  """B = 1 (the network trained end to end as a diffusion classifier
  through the block-wise API), 1,500 steps with the library's defaults."""
  trainer = _trainer(1)
  trainer.fit(batches(), total_steps=1500, quiet=True)
  return trainer


def test_one_block_learns_with_the_default_sampler(one_block):
  """The default sampler of B = 1 is one step from sigma_max: it predicts
  from the noise it drew (the official one-point grid, [sigma_min], reads
  noise of scale 80 as nearly clean: chance accuracy), and no longer grid
  does better (`benchmarks/one_block.py` has the figures over seeds, and
  the plain classifier's)."""
  sampler = one_block.sampler()
  np.testing.assert_array_equal(sampler.levels, [80.0])
  default = one_block.evaluate([TEST])["accuracy"]
  assert default > 0.6
  official = db.Sampler(levels=np.array([0.002]), blocks=np.array([0]))
  assert one_block.evaluate([TEST], sampler=official)["accuracy"] < 0.3
  for num_steps in (2, 4):
    sampler = one_block.sampler(num_steps)
    accuracy = one_block.evaluate([TEST], sampler=sampler)["accuracy"]
    assert accuracy < default + 0.05, (num_steps, accuracy, default)


def test_one_step_of_several_blocks_runs_block_0():
  """num_steps=1 of a 2-block model is block 0's estimate at sigma_max."""
  plan, _ = model(2)
  sampler = db.Sampler.of(plan, num_steps=1)
  np.testing.assert_array_equal(sampler.levels, [80.0])
  np.testing.assert_array_equal(sampler.blocks, [0])


# ----- One inference key ------------------------------------------------------


def test_evaluate_and_predict_draw_the_same_noise(one_block):
  """Same weights, same defaults: predict(batch) is evaluate's batch 0."""
  sampler = one_block.sampler(2)
  logits = np.asarray(one_block.predict(TEST, sampler=sampler))
  from_predict = np.mean(np.argmax(logits, -1) == TEST["label"])
  result = one_block.evaluate([TEST], sampler=sampler)
  assert result["accuracy"] == from_predict
  key = jax.random.key(7)
  again = np.asarray(one_block.predict(TEST, sampler=sampler, key=key))
  other = one_block.evaluate([TEST], sampler=sampler, key=key)
  assert other["accuracy"] == np.mean(np.argmax(again, -1) == TEST["label"])


# ----- Inference without the optimizer ----------------------------------------


def test_inference_trainer_restores_any_run_in_a_fresh_process(tmp_path):
  """Trained with a chain and a schedule; restored with optimizer=None in
  another process, the predictions are identical. It refuses to train."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 5, 30)
  chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
  plan, m = model(2)
  trainer = db.Trainer(
    m, db.DiffusionClassification(), plan, chain, workdir=str(tmp_path)
  )
  trainer.fit(batches(), total_steps=30, quiet=True)
  sampler = trainer.sampler(4)
  expected = np.asarray(trainer.predict(TEST, sampler=sampler))
  trainer.close()

  script = MODEL_SOURCE + textwrap.dedent(
    f"""
    import sys
    plan, m = model(2)
    trainer = db.Trainer(
      m, db.DiffusionClassification(), plan, workdir={str(tmp_path)!r}
    )
    assert trainer.restore() == 30
    logits = trainer.predict(TEST, sampler=trainer.sampler(4))
    np.save({str(tmp_path / "logits.npy")!r}, np.asarray(logits))
    try:
      trainer.step(next(batches()))
    except ValueError as e:
      print("refused:", e)
    """
  )
  proc = subprocess.run(
    [sys.executable, "-c", script],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), expected)
  assert "refused: this Trainer was built with optimizer=None" in proc.stdout


def test_inference_trainer_refuses_to_train_or_save(tmp_path):
  plan, m = model(2)
  trainer = db.Trainer(m, db.DiffusionClassification(), plan)
  assert not trainer.trains
  assert "opt_state" not in trainer.state["blocks"][0]
  batch = next(batches())
  with pytest.raises(ValueError, match=r"optimizer=None .* cannot train"):
    trainer.step(batch)
  with pytest.raises(ValueError, match=r"optimizer=None .* cannot train"):
    trainer.fit(batches(), total_steps=2)
  with pytest.raises(ValueError, match=r"cannot save"):
    trainer.save()
  assert trainer.step_count == 0


# ----- Per-block optimizers ---------------------------------------------------


def test_per_block_optimizers_train_each_block_with_its_own():
  """Block 0 with Adam, block 1 frozen (SGD at rate 0), the shared parts
  with their own SGD: each group keeps its own transformation's state."""
  trainer = _trainer(
    2,
    optimizer=lambda b: optax.adam(1e-2) if b == 0 else optax.sgd(0.0),
    shared_optimizer=optax.sgd(0.1),
    schedule="round_robin",
  )
  before = jax.device_get(trainer.state)
  trainer.fit(batches(), total_steps=6, quiet=True)
  after = jax.device_get(trainer.state)

  def params(state, group):
    return state[group] if group == "shared" else state["blocks"][group]

  def changed(group):
    pairs = zip(
      jax.tree.leaves(params(before, group)["params"]),
      jax.tree.leaves(params(after, group)["params"]),
      strict=True,
    )
    return any(not np.array_equal(x, y) for x, y in pairs)

  assert changed(0) and changed("shared")
  assert not changed(1)
  # Adam's moments for block 0; SGD keeps none for block 1.
  assert len(jax.tree.leaves(after["blocks"][0]["opt_state"])) > len(
    jax.tree.leaves(after["blocks"][1]["opt_state"])
  )


def test_per_block_optimizers_are_checked():
  plan, m = model(2)
  task = db.DiffusionClassification()
  with pytest.raises(ValueError, match="shared_optimizer="):
    db.Trainer(m, task, plan, lambda b: optax.sgd(0.1))
  with pytest.raises(TypeError, match=r"optimizer\(1\)="):
    db.Trainer(
      m,
      task,
      plan,
      lambda b: optax.sgd(0.1) if b == 0 else "adam",
      shared_optimizer=optax.sgd(0.1),
    )
  with pytest.raises(TypeError, match=r"optax.adamw\(1e-3\)"):
    db.Trainer(m, task, plan, optax.adamw)


# ----- Bad batches ------------------------------------------------------------


@pytest.fixture
def fresh():
  return _trainer(2)


def _with(**changes):
  batch = dict(next(batches()))
  batch.update(changes)
  return batch


def _labels(value):
  labels = next(batches())["label"].copy()
  labels[3] = value
  return labels


@pytest.mark.parametrize(
  "batch, error, message",
  [
    (
      lambda: _with(label=_labels(10)),
      ValueError,
      r"'label' holds 10;.*class ids in \[0, 10\)",
    ),
    (lambda: _with(label=_labels(-1)), ValueError, r"'label' holds -1"),
    (
      lambda: {"img": next(batches())["image"], "label": _labels(0)},
      ValueError,
      r"no field 'image'.*the batch has 'img' and 'label'",
    ),
    (
      lambda: _with(label=_labels(0)[:-1]),
      ValueError,
      r"'label' has 63 rows but 'image' has 64",
    ),
    (
      lambda: _with(label=_labels(0).astype(np.float32)),
      TypeError,
      r"'label' has dtype float32.*class ids",
    ),
    (
      lambda: _with(label=_labels(0)[:, None]),
      ValueError,
      r"'label' has shape \[64, 1\]",
    ),
    (lambda: [next(batches())], TypeError, r"a batch must be a mapping"),
  ],
  ids=[
    "label=num_classes",
    "label=-1",
    "missing field",
    "short labels",
    "float labels",
    "labels [b, 1]",
    "not a mapping",
  ],
)
def test_a_bad_batch_is_one_line_naming_the_field(fresh, batch, error, message):
  with pytest.raises(error, match=message) as raised:
    fresh.step(batch())
  assert "\n" not in str(raised.value)
  assert fresh.step_count == 0  # Nothing was trained.


def test_shapes_follow_the_first_batch_or_the_batch_spec(fresh):
  """[b, 64] images where [b, 8, 8, 1] belong: refused in training and in
  evaluation after a first batch, and from the start with a batch_spec."""
  flat = _with(image=next(batches())["image"].reshape(64, 64))
  fresh.step(next(batches()))
  with pytest.raises(ValueError, match=r"'image' has shape \[64, 64\]"):
    fresh.step(flat)
  with pytest.raises(ValueError, match=r"'image' has shape \[64, 64\]"):
    fresh.evaluate([flat])
  assert fresh.batch_spec["image"] == [[8, 8, 1], "float32"]

  spec = {"image": jax.ShapeDtypeStruct((64, 8, 8, 1), jnp.float32)}
  declared = _trainer(2, batch_spec=spec)
  with pytest.raises(ValueError, match=r"batches are \[batch, 8, 8, 1\]"):
    declared.step(flat)


def test_an_inference_trainer_takes_the_checkpoints_shapes(tmp_path):
  trainer = _trainer(2, workdir=str(tmp_path))
  trainer.fit(batches(), total_steps=2, quiet=True)
  trainer.close()
  plan, m = model(2)
  restored = db.Trainer(
    m, db.DiffusionClassification(), plan, workdir=str(tmp_path)
  )
  restored.restore()
  flat = {"image": TEST["image"].reshape(-1, 64)}
  with pytest.raises(ValueError, match=r"'image' has shape"):
    restored.predict(flat)


def test_a_nan_loss_says_whether_the_batch_was_finite(tmp_path):
  nan_images = next(batches())["image"].copy()
  nan_images[0, 0, 0, 0] = np.nan
  trainer = _trainer(2)
  with pytest.raises(NonFiniteLossError) as raised:
    trainer.fit(iter([_with(image=nan_images)] * 10), total_steps=10)
  message = str(raised.value)
  assert "held NaN or Inf" in message and "nothing was saved" in message
  assert "step None" not in message

  exploding = _trainer(2, optimizer=optax.sgd(1e30), workdir=str(tmp_path))
  with pytest.raises(NonFiniteLossError) as raised:
    exploding.fit(batches(), total_steps=40, quiet=True)
  message = str(raised.value)
  assert "The batch was finite" in message
  assert "no checkpoint was written yet" in message
  assert "step None" not in message
  exploding.close()


# ----- Progress ---------------------------------------------------------------


def test_fit_prints_progress_on_stderr_unless_quiet(capfd):
  trainer = _trainer(1)
  trainer.fit(batches(), total_steps=20)
  err = capfd.readouterr().err
  assert "Training to step 20" in err
  line = next(x for x in err.splitlines() if x.startswith("step 20/20"))
  assert "steps/s" in line and "ETA" in line and "loss" in line
  assert "? steps/s" not in line  # The rate is known at the first line.
  quiet = _trainer(1)
  quiet.fit(batches(), total_steps=20, quiet=True)
  err = capfd.readouterr().err
  assert "step 20/20" not in err and "Training to step" not in err
