"""The public library API: a family defined entirely here (its own noise
process, task, model and data) trains block-wise through the Trainer and
the command line's trainer; Linen layers; bad input; a light import."""

import dataclasses
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen, nnx

import dblocks_jax as db

WIDTH, INPUTS, TARGETS = 32, 6, 4


# ----- A toy family ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinearInterpolation:
  """A noise process on t in [0, 1]: z_t = (1 - t) y + t eps (larger t is
  noisier). Equal-width partition, linear widening, uniform draws, a linear
  grid: nothing of EDM."""

  def boundaries(self, num_blocks, kind="equiprobable", explicit=None):
    return np.linspace(1.0, 0.0, num_blocks + 1)

  def widen(self, boundaries, gamma):
    hi, lo = boundaries[:-1], boundaries[1:]
    width = hi - lo
    return np.stack(
      [
        np.maximum(lo - gamma * width, 0.0),
        np.minimum(hi + gamma * width, 1.0),
      ],
      -1,
    )

  def sample(self, key, shape, lo, hi):
    return jax.random.uniform(key, shape, minval=lo, maxval=hi)

  def route(self, levels, boundaries):
    ascending = np.asarray(boundaries)[::-1]
    xp = np if isinstance(levels, float | np.ndarray) else jnp
    bucket = xp.searchsorted(ascending, levels, side="right") - 1
    return len(ascending) - 2 - xp.clip(bucket, 0, len(ascending) - 2)

  def grid(self, num_steps, kind=""):
    return np.linspace(1.0, 0.0, num_steps + 1)[:-1]

  def describe(self):
    return {"process": "linear_interpolation"}


class Regression:
  """Predict y from x: the block denoises z_t toward y, conditioned on x."""

  def loss(self, parts, batch, level, key, *, train=True):
    y = batch["y"]
    t = level[:, None]
    z = (1 - t) * y + t * jax.random.normal(key, y.shape)
    out = self._denoise(parts, batch["x"], z, level)
    return jnp.mean((out - y) ** 2), {"mse": jnp.mean((out - y) ** 2)}

  def _denoise(self, parts, x, z, t):
    h = parts["stem"](jnp.concatenate([x, z], -1))
    return parts["readout"](parts["layers"](h, t[:, None]))

  def predict(self, parts_for_block, batch, key, *, sampler):
    x = batch["x"]
    z = jax.random.normal(key, (x.shape[0], TARGETS))
    levels = [float(t) for t in sampler.levels] + [0.0]
    for i, block in enumerate(sampler.blocks):
      t, t_next = levels[i], levels[i + 1]
      y_hat = self._denoise(
        parts_for_block(int(block)), x, z, jnp.full((x.shape[0],), t)
      )
      z = y_hat + (t_next / t) * (z - y_hat)  # Exact for the linear path.
    return z

  def evaluate(self, predict, batches, key):
    errors = [float(jnp.mean((predict(b, key) - b["y"]) ** 2)) for b in batches]
    return {"mse": float(np.mean(errors))}


class FiLMLayer(nnx.Module):
  def __init__(self, rngs):
    self.norm = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.film = nnx.Linear(1, 2 * WIDTH, rngs=rngs)
    self.mlp = nnx.Linear(WIDTH, WIDTH, rngs=rngs)

  def __call__(self, h, t):
    scale, shift = jnp.split(self.film(t), 2, -1)
    return h + self.mlp(jax.nn.gelu(self.norm(h) * (1 + scale) + shift))


def shell(rngs):
  return {
    "stem": nnx.Linear(INPUTS + TARGETS, WIDTH, rngs=rngs),
    "readout": nnx.Linear(WIDTH, TARGETS, rngs=rngs),
  }


_W = np.random.default_rng(0).normal(size=(INPUTS, TARGETS)) / 2


def batches(seed, size=32):
  rng = np.random.default_rng(seed)
  while True:
    x = rng.normal(size=(size, INPUTS)).astype(np.float32)
    yield {"x": x, "y": np.tanh(x @ _W).astype(np.float32)}


class Batches:
  """Checkpointable batches (the iterator protocol grain's handler reads)."""

  def __init__(self, seed):
    self.seed, self.position = seed, 0

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng((self.seed, self.position))
    self.position += 1
    x = rng.normal(size=(32, INPUTS)).astype(np.float32)
    return {"x": x, "y": np.tanh(x @ _W).astype(np.float32)}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def make_trainer(workdir=None, **kwargs):
  plan = db.BlockPlan.create(
    LinearInterpolation(), num_layers=4, num_blocks=2, gamma=0.1
  )
  model = db.BlockwiseModel.build(plan, shell=shell, layer=FiLMLayer)
  return db.Trainer(
    model,
    Regression(),
    plan,
    optax.adam(3e-3),
    workdir=workdir,
    log_every=50,
    checkpoint_every=100,
    **kwargs,
  )


def test_a_custom_family_trains_through_the_public_api(tmp_path):
  trainer = make_trainer(str(tmp_path / "run"))
  assert list(trainer.plan.boundaries) == [1.0, 0.5, 0.0]
  test = [next(batches(99, 256))]
  sampler = trainer.sampler(num_steps=4)
  assert list(sampler.blocks) == [0, 0, 0, 1]
  before = trainer.evaluate(test, sampler=sampler)["mse"]
  trainer.fit(Batches(1), total_steps=400)
  after = trainer.evaluate(test, sampler=sampler)["mse"]
  assert after < 0.25 * before, (before, after)
  assert trainer.step_count == 400
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["300", "400"]
  trainer.close()


def test_a_killed_run_resumes_exactly(tmp_path):
  once = make_trainer(str(tmp_path / "once"))
  once.fit(Batches(1), total_steps=300)
  half = make_trainer(str(tmp_path / "twice"))
  half.fit(Batches(1), total_steps=200)
  half.close()
  resumed = make_trainer(str(tmp_path / "twice"))
  data = Batches(1)
  resumed.fit(data, total_steps=300)
  assert data.position == 300  # The stream continued where it stopped.
  chex.assert_trees_all_equal(
    jax.device_get(once.state), jax.device_get(resumed.state), strict=True
  )
  changed = make_trainer(str(tmp_path / "twice"), schedule="round_robin")
  changed.fit(Batches(1), total_steps=300)  # Done: nothing to resume.
  other = db.BlockPlan.create(LinearInterpolation(), num_layers=4, num_blocks=4)
  model = db.BlockwiseModel.build(other, shell=shell, layer=FiLMLayer)
  with pytest.raises(db.errors.TopologyError, match="num_blocks: 2 -> 4"):
    db.Trainer(
      model,
      Regression(),
      other,
      optax.adam(1e-3),
      workdir=str(tmp_path / "once"),
    ).fit(Batches(1), total_steps=400)


# ----- The same family through the command line's trainer --------------------


class ToyFamily:
  def build(self, config, *, held_blocks=None):
    plan = db.BlockPlan.create(
      LinearInterpolation(),
      num_layers=config.model.num_layers,
      num_blocks=config.blocks.num_blocks,
      gamma=config.blocks.gamma,
    )
    model = db.BlockwiseModel.build(
      plan, shell=shell, layer=FiLMLayer, seed=config.seed
    )
    return db.families.Experiment("dblocks", model, Regression(), plan)

  def train_data(self, config, specs):
    return {s: Batches(seed) for s, (seed, _, _) in specs.items()}

  def batch_spec(self, config):
    return {
      "x": jax.ShapeDtypeStruct((config.batch_size, INPUTS), jnp.float32),
      "y": jax.ShapeDtypeStruct((config.batch_size, TARGETS), jnp.float32),
    }

  def evaluator(self, config, experiment, workdir):
    test = [next(batches(99, 256))]
    return lambda trainer: trainer.evaluate(
      test, sampler=trainer.sampler(num_steps=4)
    )

  def describe(self, result):
    return f"mse: {result['mse']:.4f}"


def toy_config():
  c = ml_collections.ConfigDict()
  c.seed, c.method, c.batch_size, c.accumulation_steps = 0, "dblocks", 32, 1
  c.total_steps, c.eval_every_steps = 200, 0
  c.log_every_steps, c.checkpoint_every_steps, c.keep_checkpoints = 50, 100, 2
  c.tensorboard = False
  c.model = ml_collections.ConfigDict({"name": "toy", "num_layers": 4})
  c.blocks = ml_collections.ConfigDict(
    dict(
      num_blocks=2,
      gamma=0.1,
      sharing="shared",
      schedule="uniform",
      train=(),
      partition="equiprobable",
    )
  )
  c.parallel = ml_collections.ConfigDict({"block_groups": 1, "data_shards": 0})
  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="adamw",
      learning_rate=3e-3,
      min_learning_rate=1e-4,
      schedule="cosine",
      warmup_steps=10,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      clip_norm=1.0,
    )
  )
  return c


def test_a_registered_family_runs_in_the_command_line_trainer(tmp_path):
  db.register_family("toy", ToyFamily())
  assert "toy" in db.families.names()
  result = db.families.train_and_evaluate(toy_config(), str(tmp_path))
  assert result["step"] == 200 and result["mse"] < 0.2
  again = db.families.train_and_evaluate(
    toy_config(), str(tmp_path)
  )  # Resumes: done.
  assert again["mse"] == pytest.approx(result["mse"])
  with pytest.raises(TypeError, match="Family protocol"):
    db.register_family("broken", object())


# ----- Linen layers through the adapter --------------------------------------


class LinenLayer(linen.Module):
  """A Linen residual layer with BatchNorm and Dropout."""

  @linen.compact
  def __call__(self, h, t, train: bool = False):
    x = linen.Dense(WIDTH)(h) * (1 + linen.Dense(WIDTH)(t))
    x = linen.BatchNorm(use_running_average=not train)(x)
    x = linen.Dropout(0.1, deterministic=not train)(x)
    return h + linen.gelu(x)


def test_linen_layers_train_through_the_adapter():
  def layer(rngs):
    return db.FromLinen(
      LinenLayer(),
      jnp.zeros((1, WIDTH)),
      jnp.zeros((1, 1)),
      rngs=rngs,
      train_kwarg="train",
    )

  plan = db.BlockPlan.create(
    LinearInterpolation(), num_layers=2, num_blocks=2, gamma=0.1
  )
  model = db.BlockwiseModel.build(plan, shell=shell, layer=layer)
  trainer = db.Trainer(model, Regression(), plan, optax.adam(3e-3))
  stats = lambda: jax.tree.leaves(
    jax.device_get(trainer.state["blocks"][0]["rest"])
  )
  before = [np.array(x) for x in stats()]
  assert before  # BatchNorm statistics are carried as non-parameter state.
  test = [next(batches(99, 256))]
  sampler = trainer.sampler(num_steps=4)
  start = trainer.evaluate(test, sampler=sampler)["mse"]
  trainer.fit(batches(3), total_steps=300)
  assert trainer.evaluate(test, sampler=sampler)["mse"] < 0.5 * start
  assert any(
    not np.allclose(a, b) for a, b in zip(before, stats(), strict=True)
  )


# ----- Bad input ------------------------------------------------------------


def test_bad_arguments_name_the_argument_and_the_fix():
  plan = db.BlockPlan.create(db.EDM(), num_layers=4, num_blocks=2)
  model = db.BlockwiseModel.build(plan, shell=shell, layer=FiLMLayer)
  with pytest.raises(TypeError, match=r"optimizer=.*optax.adamw"):
    db.Trainer(model, Regression(), plan, "adam")
  with pytest.raises(TypeError, match="task=object is not a Task"):
    db.Trainer(model, object(), plan, optax.adam(1e-3))
  with pytest.raises(ValueError, match="plan=None"):
    db.Trainer(model, Regression(), None, optax.adam(1e-3))
  three = db.BlockPlan.create(db.EDM(), num_layers=3, num_blocks=3)
  with pytest.raises(ValueError, match="model has 2 blocks but the plan 3"):
    db.Trainer(model, Regression(), three, optax.adam(1e-3))
  with pytest.raises(ValueError, match="num_blocks=5 is larger"):
    db.BlockPlan.create(db.EDM(), num_layers=4, num_blocks=5)
  with pytest.raises(ValueError, match="block_groups=16 needs at least 16"):
    db.Trainer(model, Regression(), plan, optax.adam(1e-3), block_groups=16)
  with pytest.raises(ValueError, match="log_every=0"):
    db.Trainer(model, Regression(), plan, optax.adam(1e-3), log_every=0)


def test_importing_the_engine_is_light():
  """The math, the engine and the trainer import without Orbax, grain,
  TFDS or PIL."""
  code = (
    "import sys, dblocks_jax as db\n"
    "assert 'jax' not in sys.modules, 'import dblocks_jax imported jax'\n"
    "db.Trainer, db.BlockPlan, db.EDM, db.DiffusionClassification\n"
    "import dblocks_jax.models.vit, dblocks_jax.models.dit\n"
    "heavy = [m for m in ('orbax', 'grain', 'tensorflow_datasets', 'PIL',"
    " 'tensorflow') if m in sys.modules]\n"
    "print(','.join(heavy))\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == ""
